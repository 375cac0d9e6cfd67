"""What a file will decode to, read from its header before any pixel is: the budget that refuses
decompression bombs, long thin strips and frames larger than their header says.

One reader a kind (HEADERS, the kinds of imaging.FORMATS); numpy only, with the format libraries.
"""
import numpy as np

from config import MiramError


class DataError(MiramError):
    pass


VOLUME_KINDS = ("nifti", "nrrd")  # files holding many slices of one subject, cut along SLICE_AXIS (VolumeView)


def _tiff_shape(path):
    import tifffile
    with tifffile.TiffFile(path) as tif:
        if len(tif.series) > 1:  # pages of different sizes: reading the first would drop the others unsaid
            raise DataError(f"{path}: holds {len(tif.series)} images of different sizes ("
                            + ", ".join("x".join(map(str, s.shape)) for s in tif.series[:4])
                            + "); save each as a file of its own")
        return tuple(tif.series[0].shape)


# PNG colour types -> the values a pixel decodes to (a palette one expands to RGB or RGBA: counted as RGBA)
PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}


def _png_shape(path):
    """(rows, columns, values a pixel) from the PNG's IHDR chunk, read here before Pillow opens the file (whose
    own bomb guard stays as it is)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file (no PNG signature and IHDR header)")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour = head[24], head[25]
    if colour not in PNG_CHANNELS:
        raise DataError(f"{path}: a PNG of unknown colour type {colour}")
    if depth == 16 and colour in (2, 6):  # Pillow decodes 16-bit colour to 8 bits
        raise DataError(f"{path}: a 16-bit colour PNG, which can only be read at 8 bits here; save it as a "
                        "16-bit grey PNG or a TIFF to keep its precision")
    return (height, width, PNG_CHANNELS[colour])


def _jpeg_shape(path):
    """(rows, columns, channels) from the JPEG's own header (Pillow opens lazily: nothing is decoded here)."""
    from PIL import Image
    with Image.open(path) as im:
        if im.format != "JPEG":
            raise DataError(f"{path}: not a JPEG file (Pillow reads it as {im.format})")
        return (im.size[1], im.size[0], len(im.getbands()))


def _nifti_shape(path):
    import nibabel as nib
    return tuple(nib.load(path).shape)


def _nrrd_shape(path):
    import nrrd
    return tuple(int(n) for n in nrrd.read_header(path)["sizes"])


def _dicom_shape(path):
    """The header's shape; for compressed pixel data, also each frame's own size, read from its codestream
    before anything is decoded (a decoder allocates what the frame says, whatever Rows and Columns say)."""
    import pydicom
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames, rows, cols = int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    pixel_data = None
    if syntax is not None and syntax.is_compressed:  # only then are the frames' bytes read here
        pixel_data = pydicom.dcmread(path).get("PixelData")
    if pixel_data is not None:
        from pydicom.encaps import generate_frames
        for n, frame in enumerate(generate_frames(pixel_data, number_of_frames=frames)):
            try:
                size = codestream_size(frame)
            except DataError as e:
                raise DataError(f"{path}: frame {n}: {e}") from None
            if size is not None and size != (rows, cols):
                raise DataError(f"{path}: frame {n} is compressed at {size[0]} x {size[1]} pixels but the header "
                                f"says {rows} x {cols}; not decoded")
    return (frames, rows, cols, int(ds.get("SamplesPerPixel", 1)))


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic; C4, C8 and CC are other segments)
# and JPEG-LS's; each is followed by length (2), precision (1), rows (2), columns (2).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def codestream_size(data):
    """(rows, columns) a compressed frame decodes to, from its JPEG / JPEG-LS start of frame or its JPEG 2000
    SIZ segment; None for an encoding without one here (RLE: its size is the header's)."""
    data = bytes(data[:1 << 16])
    if data[:4] == b"\xff\x4f\xff\x51":  # JPEG 2000: SIZ holds Xsiz, Ysiz, XOsiz, YOsiz after Lsiz and Rsiz
        if len(data) < 24:
            raise DataError("a JPEG 2000 frame too short to hold its size")
        x, y, x0, y0 = (int.from_bytes(data[8 + 4 * i:12 + 4 * i], "big") for i in range(4))
        return y - y0, x - x0
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise DataError("a JPEG frame whose segments are damaged")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _SOF and at + 9 <= len(data):
            return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        at += 2 + length
    raise DataError("a JPEG frame with no start-of-frame segment in its first 64 KB")


HEADERS = {"tiff": _tiff_shape, "png": _png_shape, "jpeg": _jpeg_shape, "nifti": _nifti_shape, "nrrd": _nrrd_shape,
           "dicom": _dicom_shape}


# A slice this much longer than wide is no image a model reads: padded to a square it would be mostly padding.
MAX_ASPECT = 20


def slice_plane(kind, shape):
    """(rows, columns) of one 2-D slice of a file of this kind and stored shape (a volume: its two largest
    axes, the plane any cut lies within)."""
    dims = [int(d) for d in shape] or [1]
    if kind in VOLUME_KINDS:
        return tuple(sorted(dims[:3], reverse=True)[:2]) if len(dims) >= 2 else (dims[0], 1)
    if kind == "dicom" and len(dims) >= 3:
        return dims[1], dims[2]
    if len(dims) >= 3 and dims[-1] in (3, 4) or kind in ("png", "jpeg") and len(dims) == 3:
        dims = dims[:-1]  # colour channels
    return (dims[-2], dims[-1]) if len(dims) >= 2 else (dims[0], 1)


def check_size(path, kind, max_pixels):
    """Refuses, from the header alone, a file that would decode to more than max_pixels values (a
    decompression bomb: a 1 MB file can hold a 30000 x 30000 image), whose slices padded to a square (as
    every phase reads them) would, or whose slices are too long and thin to be images."""
    try:
        shape = HEADERS[kind](path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read the {kind} header ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    values = int(np.prod(shape, dtype=np.float64))
    if values > max_pixels:
        raise DataError(f"{path}: {' x '.join(map(str, shape))} = {values / 1e6:.0f} million values, over the "
                        f"MAX_PIXELS budget of {max_pixels / 1e6:.0f} million; raise MAX_PIXELS to read it")
    rows, cols = slice_plane(kind, shape)
    side = max(rows, cols)
    if kind not in VOLUME_KINDS and side > MAX_ASPECT * max(1, min(rows, cols)):
        raise DataError(f"{path}: slices of {rows} x {cols} pixels (1:{side // max(1, min(rows, cols))}) are too long "
                        f"and thin to be images (at most 1:{MAX_ASPECT})")
    if side * side > max_pixels:
        raise DataError(f"{path}: a {rows} x {cols} slice padded to a {side} x {side} square is {side * side / 1e6:.0f} "
                        f"million values, over the MAX_PIXELS budget of {max_pixels / 1e6:.0f} million")
    return shape



"""Every image format MIRAM reads and writes, in one table, and the intensity maths on decoded pixels.

    kind          extensions       read as                                 written back with
    tiff          .tif .tiff       8/16-bit, float, RGB(A); a page stack   tifffile
    png           .png             grey, grey+alpha, RGB(A), palette       Pillow
    jpeg          .jpg .jpeg       grey, RGB, CMYK (as RGB)                Pillow, quality 95 (lossy, as the file)
    nifti         .nii .nii.gz     a volume, turned to RAS, cut along      nibabel, affine, header and voxel
                                   SLICE_AXIS (VolumeView)                 order kept
    nrrd          .nrrd            a volume (3D Slicer's), as NIfTI        pynrrd, space directions, origin
                                                                           and header kept
    dicom         .dcm             a slice (or a multi-frame stack)        pydicom, a new UID, marked DERIVED

A new format is one entry in FORMATS plus its reader and writer below. numpy only (with the decoders):
the deployed ONNX path reads scans without torch.
"""
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from config import MAX_PIXELS, MiramError
from headers import VOLUME_KINDS, DataError, check_size
from records import temp_beside
from volumes import VolumeView



# kind -> extensions; ".nii.gz" before ".nii" is not needed: matching is on the whole suffix
FORMATS = {"tiff": (".tif", ".tiff"), "png": (".png",), "jpeg": (".jpg", ".jpeg"), "nifti": (".nii", ".nii.gz"),
           "nrrd": (".nrrd",), "dicom": (".dcm",)}
EXTENSIONS = tuple(ext for exts in FORMATS.values() for ext in exts)


def split_ext(path):
    """(stem, extension) with the double extension .nii.gz kept whole."""
    base = os.path.basename(path)
    low = base.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext):
            return base[:-len(ext)], base[-len(ext):]
    return os.path.splitext(base)


def kind_of(path):
    ext = split_ext(path)[1].lower()
    for kind, exts in FORMATS.items():
        if ext in exts:
            return kind
    raise DataError(f"{path}: unsupported format {ext or '(no extension)'!r} (expected one of {', '.join(EXTENSIONS)})")


SIGNATURES = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def content_kind(path):
    """The kind a file's extension says, or, for a PNG named .jpg or a JPEG named .png (public sets hold
    both), the kind its first bytes say."""
    kind = kind_of(path)
    if kind in SIGNATURES:
        with open(path, "rb") as f:
            head = f.read(8)
        return next((k for k, sig in SIGNATURES.items() if head.startswith(sig)), kind)
    return kind


def is_image(name, kinds=tuple(FORMATS)):
    low = name.lower()
    return not os.path.basename(name).startswith(".") and any(
        low.endswith(ext) for k in kinds for ext in FORMATS[k])


def list_names(folder):
    """The entries of a folder; one clear error where it cannot be read (permissions, a vanished disk)."""
    try:
        return os.listdir(folder)
    except OSError as e:
        raise DataError(f"{folder}: cannot list this folder ({e.strerror or type(e).__name__})") from None


def list_images(folder, kinds=tuple(FORMATS)):
    """The image files of a folder: regular files with an image extension (not a folder, pipe or device
    that happens to be named like one)."""
    return sorted(p for p in (os.path.join(folder, f) for f in list_names(folder) if is_image(f, kinds))
                  if os.path.isfile(p))


# ---- reading -----------------------------------------------------------------------------------------

@dataclass
class Scan:
    path: str
    kind: str
    slices: np.ndarray             # (S, H, W) float64, grayscale, in the file's own units
    dtype: np.dtype                # what the file stores
    shape: tuple                   # the stored array's shape
    channels: int = 0              # 3/4 for a colour file: the result is written to every colour channel
    meta: dict = field(default_factory=dict)


def _read_tiff(path, meta):
    """Colour samples (if any) last, using the file's own axes: a 3-page stack and a planar RGB image have
    the same shape, only the TIFF tags tell them apart."""
    import tifffile
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    if "S" in axes and axes.index("S") != len(axes) - 1:
        arr = np.moveaxis(arr, axes.index("S"), -1)
    return arr


def _read_png(path, meta):
    from PIL import Image
    with Image.open(path) as im:
        if im.mode == "P":  # palette indices mean nothing as intensities: expand to the colours
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        meta["mode"] = im.mode
        arr = np.asarray(im)
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha: the grey is the image
        meta["alpha"] = arr[..., 1].copy()
        arr = arr[..., 0]
        _alpha_note(path)
    return arr


def _read_jpeg(path, meta):
    from PIL import Image
    with Image.open(path) as im:
        if im.mode not in ("L", "RGB"):  # CMYK, YCCK: as the RGB they display as
            im = im.convert("RGB")
        return np.asarray(im)


def _alpha_note(path):
    warnings.warn(f"{path}: its alpha channel is not read (transparency is not intensity); a restored file keeps it",
                  stacklevel=4)


def _read_nifti(path, meta):
    import nibabel as nib
    img = nib.load(path)
    meta["image"], meta["affine"] = img, img.affine
    return np.asanyarray(img.dataobj)


# NRRD spaces whose first two axes point the other way from RAS's (left, posterior)
_LPS_SPACES = ("left-posterior-superior", "LPS", "left-posterior-superior-time")


def nrrd_affine(header):
    """The voxel-to-RAS affine of an NRRD header (space directions and origin; LPS turned to RAS); identity
    axes where it has none."""
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = [d for d in np.asarray(directions, dtype=object) if d is not None and np.all(np.isfinite(np.asarray(d, float)))]
        if len(rows) == 3:
            affine[:3, :3] = np.asarray(rows, float).T
    if header.get("space origin") is not None:
        affine[:3, 3] = np.asarray(header["space origin"], float)[:3]
    if header.get("space") in _LPS_SPACES:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return affine


def _read_nrrd(path, meta):
    import nrrd
    data, header = nrrd.read(path)  # axes in the file's order (x fastest), as nibabel gives them
    meta["header"], meta["affine"] = header, nrrd_affine(header)
    return data


def _read_dicom(path, meta):
    import pydicom
    ds = pydicom.dcmread(path)
    meta["dataset"] = ds
    return ds.pixel_array


READERS = {"tiff": _read_tiff, "png": _read_png, "jpeg": _read_jpeg, "nifti": _read_nifti, "nrrd": _read_nrrd,
           "dicom": _read_dicom}


def read_scan(path, max_pixels=MAX_PIXELS, slice_axis=2, view=None) -> Scan:
    """Any supported file as (S, H, W) grayscale slices, with what is needed to write a result back. A volume
    (NIfTI) is cut as VolumeView says, along slice_axis, or by `view` (a mask cut as its image is); a TIFF
    stack along its pages."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    kind = content_kind(path)
    check_size(path, kind, max_pixels)
    meta = {}
    try:
        arr = np.asarray(READERS[kind](path, meta))
    except MiramError:
        raise
    except Exception as e:  # every decoder has its own exceptions; all mean "cannot read this file"
        raise DataError(f"{path}: cannot read {kind} file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if arr.size == 0:  # a header can promise a series whose pages hold nothing
        raise DataError(f"{path}: holds no pixels (decoded shape {arr.shape})")
    channels = 0
    if kind in ("tiff", "png", "jpeg") and arr.ndim == 3 and arr.shape[-1] in (3, 4):
        channels = arr.shape[-1]
        if channels == 4:
            meta["alpha"] = arr[..., 3].copy()
            _alpha_note(path)
        slices = to_grayscale(arr, path)[None]
    elif arr.ndim == 2:
        slices = to_grayscale(arr, path)[None]
    elif arr.ndim == 3:
        if kind in VOLUME_KINDS:
            meta["view"] = view or VolumeView(meta["affine"], slice_axis)
            stack = meta["view"].slices(arr)
        else:
            stack = arr
        slices = np.stack([to_grayscale(s, f"{path}[{i}]") for i, s in enumerate(stack)])
    else:
        raise DataError(f"{path}: expected a slice or a stack of slices, got an array of shape {arr.shape}")
    return Scan(path, kind, slices.astype(np.float64), arr.dtype, arr.shape, channels, meta)


def read_slice(path, max_pixels=MAX_PIXELS) -> np.ndarray:
    """One 2-D slice as float32 (H, W): a file holding several is refused, naming it."""
    scan = read_scan(path, max_pixels)
    if len(scan.slices) != 1:
        raise DataError(f"{path}: holds {len(scan.slices)} slices (shape {scan.shape}); expected one 2-D slice")
    return scan.slices[0].astype(np.float32)


def read_volume(path, max_pixels=MAX_PIXELS):
    """A volume file's voxels as stored (no grayscale conversion) and its affine, for VolumeView."""
    check_size(path, kind_of(path), max_pixels)
    meta = {}
    try:
        return np.asanyarray(READERS[kind_of(path)](path, meta)), meta["affine"]
    except MiramError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read volume ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def volume_header(path):
    """A volume's (shape, affine) from its header alone."""
    if kind_of(path) == "nrrd":
        import nrrd
        header = nrrd.read_header(path)
        return tuple(int(n) for n in header["sizes"]), nrrd_affine(header)
    import nibabel as nib
    img = nib.load(path)
    return img.shape, img.affine


def stored_dtype(path):
    """The pixel type a file stores, read from its header only ("unreadable" when it cannot be)."""
    try:
        kind = content_kind(path)
        if kind == "tiff":
            import tifffile
            with tifffile.TiffFile(path) as t:
                return str(t.series[0].dtype)
        if kind in ("png", "jpeg"):
            from PIL import Image
            with Image.open(path) as im:
                return f"{kind}:{im.mode}"
        if kind == "nifti":
            import nibabel as nib
            return str(nib.load(path).get_data_dtype())
        import pydicom
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return f"dicom:{ds.get('BitsAllocated', '?')}bit"
    except Exception:
        return "unreadable"


def to_grayscale(arr: np.ndarray, path: str = "image") -> np.ndarray:
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{path}: unsupported pixel type {arr.dtype}")
    while arr.ndim > 2 and arr.shape[0] == 1:  # a single page or frame
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # channels last (RGB, RGBA)
        rgb = arr[..., :3].astype(np.float64)
        arr = rgb @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709 luma, as scikit-image's rgb2gray
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D slice, got an array of shape {arr.shape}")
    if min(arr.shape) < 8:
        raise DataError(f"{path}: image too small ({arr.shape[0]}x{arr.shape[1]}; at least 8x8)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or infinite pixel values")
    return arr


# ---- writing -----------------------------------------------------------------------------------------

def _cast(values, dtype):
    """Back to the stored dtype: rounded and clipped to its range for integers."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def to_stored_layout(scan: Scan, slices):
    """(S, H, W) float results -> an array shaped and typed like the file's own."""
    if len(scan.shape) == 2 or scan.channels:
        arr = slices[0]
    elif scan.kind in VOLUME_KINDS:
        arr = scan.meta["view"].stored(slices)
    else:
        arr = slices
    alpha = scan.meta.get("alpha")
    if scan.channels:
        arr = np.repeat(arr[..., None], scan.channels, axis=-1)
        if scan.channels == 4:
            arr[..., 3] = alpha_at(alpha, arr.shape[:2])  # keep the original transparency
    elif alpha is not None:  # grey + alpha
        arr = np.stack([arr, alpha_at(alpha, arr.shape)], axis=-1)
    return _cast(arr, scan.dtype)


def alpha_at(alpha, shape):
    """A file's alpha channel at a result's size: as stored, every other pixel for a half-resolution one,
    each pixel repeated for a finer one."""
    if alpha.shape == tuple(shape):
        return alpha
    if shape[0] > alpha.shape[0]:
        k = -(-shape[0] // alpha.shape[0])
        return np.repeat(np.repeat(alpha, k, axis=0), k, axis=1)[:shape[0], :shape[1]]
    return alpha[::2, ::2][:shape[0], :shape[1]]


def _write_tiff(scan, arr, path, zoom):
    import tifffile
    tifffile.imwrite(path, arr, photometric="rgb" if scan.channels else "minisblack")


def _write_png(scan, arr, path, zoom):
    from PIL import Image
    Image.fromarray(arr).save(path, format="PNG")


def _write_jpeg(scan, arr, path, zoom):
    from PIL import Image
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def zoomed_axes(scan, axes, origin, zoom):
    """The grid of a result with `zoom` times the pixels in-plane (0.5: half resolution, 2: twice): the
    in-plane stored axes' step vectors (axes: one row a stored axis) divided by zoom, the origin moved to the
    centre of the first new voxel, so every new voxel lies inside the stored voxel it came from and each
    stored voxel's centre is the mean of its new voxels' (or the reverse). -> (axes, origin)."""
    cut = scan.meta["view"].cut_axis if "view" in scan.meta else 2  # a 2-D volume: its third axis
    in_plane = [i for i in range(3) if i != cut]
    axes, origin = np.array(axes, float), np.array(origin, float)
    origin = origin + axes[in_plane].sum(axis=0) * (1 / zoom - 1) / 2
    axes[in_plane] /= zoom
    return axes, origin


def _write_nifti(scan, arr, path, zoom):
    import nibabel as nib
    src = scan.meta["image"]
    affine = src.affine.copy()
    if zoom != 1:
        axes, origin = zoomed_axes(scan, affine[:3, :3].T, affine[:3, 3], zoom)
        affine[:3, :3], affine[:3, 3] = axes.T, origin
    out = type(src)(arr, affine, src.header.copy())
    out.set_data_dtype(scan.dtype)
    nib.save(out, path)


def _write_nrrd(scan, arr, path, zoom):
    import nrrd
    header = {k: v for k, v in scan.meta["header"].items() if k not in ("sizes", "type", "dimension", "encoding")}
    if zoom != 1 and header.get("space directions") is not None and header.get("space origin") is not None:
        header["space directions"], header["space origin"] = zoomed_axes(scan, header["space directions"],
                                                                         header["space origin"], zoom)
    nrrd.write(path, np.ascontiguousarray(arr) if arr.flags.c_contiguous else arr, header, compression_level=1)


def _write_dicom(scan, arr, path, zoom):
    from pydicom.uid import generate_uid
    ds = scan.meta["dataset"].copy()
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        ds.decompress()
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if zoom != 1:
        ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
        if "PixelSpacing" in ds:
            ds.PixelSpacing = [float(v) / zoom for v in ds.PixelSpacing]
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:  # the first pixel's centre moves too
            row, col = (np.array(ds.ImageOrientationPatient[k:k + 3], float) for k in (0, 3))
            spacing = [float(v) * zoom for v in ds.PixelSpacing]  # the stored pixel's (row, column) spacing
            shift = (row * spacing[1] + col * spacing[0]) * (1 / zoom - 1) / 2
            ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + shift]
    # A derived image is a new instance: archived beside the original it must not collide with it.
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = "MIRAM restoration" + {1: "", 0.5: " (half resolution)"}.get(zoom, f" ({zoom:g}x resolution)")
    ds.save_as(path)


WRITERS = {"tiff": _write_tiff, "png": _write_png, "jpeg": _write_jpeg, "nifti": _write_nifti, "nrrd": _write_nrrd,
           "dicom": _write_dicom}


def write_scan(scan: Scan, slices, path, coarse=False, zoom=1):
    """Writes results in the scan's format, atomically. zoom: the results' in-plane pixels per stored pixel
    (the geometry follows: voxel size divided by it); coarse: half resolution, zoom 0.5."""
    zoom = 0.5 if coarse else zoom
    arr = to_stored_layout(scan, slices)
    tmp = None
    try:
        fd, tmp = temp_beside(path, split_ext(path)[1])
        os.close(fd)
        WRITERS[scan.kind](scan, arr, tmp, zoom)
        os.replace(tmp, path)  # a failure never leaves a partly written output under the real name
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


# ---- intensities and geometry ------------------------------------------------------------------------

def normalize_intensity(img: np.ndarray, low=0.5, high=99.5):
    """Robust per-image scaling to [0, 1]: the low/high percentiles map to 0/1, the rest is clipped.

    Returns (image, (lo, hi)) so that a result can be mapped back to the original range. A constant image
    maps to zeros.
    """
    lo, hi = np.percentile(img, [low, high])
    if hi <= lo:  # flat within the percentiles: fall back to the full range
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img, dtype=np.float32), (float(lo), float(lo) + 1.0)
    return np.clip((img - lo) / (hi - lo), 0, 1).astype(np.float32), (float(lo), float(hi))


def fit_to_square(img: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Pads to a centred square (no distortion of the aspect ratio), then resizes to size x size."""
    from skimage.transform import resize
    h, w = img.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((side, side), dtype=img.dtype)
    square[top:top + h, left:left + w] = img
    if side == size:
        return square.astype(np.float32)
    return resize(square, (size, size), order=order, anti_aliasing=(order > 0 and side > size),
                  preserve_range=True).astype(np.float32)


def foreground_patches(images, patch, threshold):
    """The patches the classifier encodes: those whose mean intensity exceeds threshold (all, when it is
    negative). images (B, 1, S, S) in [0, 1] -> keep (B, K) int64 patch indices, foreground first in raster
    order, and valid (B, K) bool. K is the batch's largest count; an image with fewer is padded with its
    first background patches, marked invalid (the encoder masks them out of attention, so a result does not
    depend on the rest of the batch)."""
    images = np.asarray(images, np.float32)
    B, g = images.shape[0], images.shape[-1] // patch
    means = images[:, 0, :g * patch, :g * patch].reshape(B, g, patch, g, patch).mean(axis=(2, 4)).reshape(B, -1)
    fg = means > threshold if threshold >= 0 else np.ones_like(means, bool)
    counts = np.maximum(fg.sum(axis=1), 1)  # a blank image still gives the encoder one patch
    K = int(counts.max())
    keep = np.argsort(~fg, axis=1, kind="stable")[:, :K].astype(np.int64)
    valid = np.arange(K)[None, :] < counts[:, None]
    return keep, valid


def source_pixel(row, col, shape, size):
    """A pixel (row, col) of fit_to_square's size x size output -> the (row, col) of the slice of this shape it
    lies on (its centre's nearest pixel, clipped to the slice)."""
    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    scale = side / size
    return (int(np.clip(np.floor((row + 0.5) * scale) - top, 0, h - 1)),
            int(np.clip(np.floor((col + 0.5) * scale) - left, 0, w - 1)))


def stored_voxel(scan, index, row, col):
    """The voxel (i, j, k) of a volume file's own grid that pixel (row, col) of its slice `index` is (the slices
    as VolumeView cuts them)."""
    shape = scan.shape[:3]
    view = scan.meta["view"]
    return tuple(int(view.slice(np.broadcast_to(np.arange(n).reshape([-1 if a == d else 1 for a in range(3)]), shape),
                                index)[row, col]) for d, n in enumerate(shape))


def model_input(raw: np.ndarray, size: int) -> np.ndarray:
    """A slice in its own units -> the (1, 1, size, size) float32 the models take, scaled as in training."""
    return fit_to_square(normalize_intensity(raw)[0], size)[None, None]

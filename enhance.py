"""Restore real scans with a pre-trained MIRAM, at their native size, format, dtype and intensity range.

    python enhance.py --input scan.tif --output restored.tif            # reconstruct (default)
    python enhance.py --input scan.tif --mode inpaint --mask damaged.tif
    python enhance.py --input folder/ --output out_folder/ [--scale coarse]
    python enhance.py                                                   # interactive: asks for paths

Modes:
  reconstruct  The MAE reconstruction of the whole image. The patches are split into complementary
               groups; each pass shows one group and predicts the others, and every patch's value is the
               mean of the passes that hid it. Deterministic: no random mask is drawn.
  inpaint      Fills the region marked non-zero in --mask (same size as the scan; any shape, across patch
               borders) from everything else, which is kept exactly, pixel for pixel. With the fine-tuned
               inpainting model (`train.py --inpaint`: OUTPUT_PATH/best_miram_inpaint.pth, or
               miram_inpaint.onnx with --backend onnx): the region's biharmonic fill, corrected by the
               model, which sees every patch of the slice. Without it: the MAE's own prediction of the
               hidden patches, corrected by a smooth (biharmonic) field so it meets the known pixels at the
               region's edge (--no-blend keeps the raw prediction).
  --scale coarse also writes the 112x112-scale reconstruction (half resolution) as <output>_coarse.

Reads .tif/.tiff (8/16-bit, float; a slice or a stack), .png, NIfTI (.nii/.nii.gz, every slice along the
last axis; affine and header kept) and DICOM (.dcm; every other element kept). Images other than
IMG_SIZE x IMG_SIZE are processed in overlapping tiles blended with a smooth window, so no seams.
"""
import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from config import MiramError, add_config_args, load_config, run_cli

SUPPORTED = (".tif", ".tiff", ".png", ".nii", ".nii.gz", ".dcm")


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM image restoration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a scan or a folder of scans (omit for interactive mode)")
    p.add_argument("--output", help="output file (or folder for a folder input); default "
                                    "OUTPUT_PATH/<name>_restored<ext>")
    p.add_argument("--mode", choices=("reconstruct", "inpaint"), default="reconstruct")
    p.add_argument("--mask", help="inpaint: image of the same size, non-zero = region to fill")
    p.add_argument("--scale", choices=("fine", "coarse"), default="fine",
                   help="coarse: also write the half-resolution (coarse head) reconstruction")
    p.add_argument("--checkpoint", help="default OUTPUT_PATH/best_miram_mae.pth")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: run OUTPUT_PATH/miram_mae.onnx with onnxruntime only (see export_deploy.py)")
    p.add_argument("--inpaint-checkpoint", help="inpaint: the fine-tuned inpainting model; default "
                   "OUTPUT_PATH/best_miram_inpaint.pth (miram_inpaint.onnx with --backend onnx), used when it exists")
    p.add_argument("--mae-fill", action="store_true",
                   help="inpaint: use the pre-trained MAE's own prediction even when the inpainting model exists")
    p.add_argument("--no-blend", action="store_true",
                   help="inpaint with the MAE's prediction: keep it raw, without the boundary correction that "
                        "makes it meet the known pixels (README: measured worse)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass")
    return add_config_args(p)


# ---- scans in their own format -----------------------------------------------------------------------

def kind_of(path):
    low = path.lower()
    for ext, kind in ((".nii.gz", "nifti"), (".nii", "nifti"), (".dcm", "dicom"), (".tif", "tiff"),
                      (".tiff", "tiff"), (".png", "png")):
        if low.endswith(ext):
            return kind
    raise MiramError(f"{path}: unsupported format (expected one of {', '.join(SUPPORTED)})")


@dataclass
class Scan:
    path: str
    kind: str
    slices: np.ndarray             # (S, H, W) float64, grayscale, in the file's own units
    dtype: np.dtype                # what the file stores
    shape: tuple                   # the stored array's shape
    channels: int = 0              # 3/4 for a colour file: the result is written to every colour channel
    meta: dict = field(default_factory=dict)


def read_scan(path) -> Scan:
    from dataset import to_grayscale
    if not os.path.isfile(path):
        raise MiramError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise MiramError(f"{path}: empty file (0 bytes)")
    kind = kind_of(path)
    meta = {}
    try:
        if kind == "tiff":
            from dataset import read_tiff
            arr = read_tiff(path)
        elif kind == "png":
            from PIL import Image
            with Image.open(path) as im:
                meta["mode"] = im.mode
                arr = np.asarray(im)
        elif kind == "nifti":
            import nibabel as nib
            img = nib.load(path)
            arr = np.asanyarray(img.dataobj)
            meta["image"] = img
        else:
            import pydicom
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
            meta["dataset"] = ds
    except MiramError:
        raise
    except Exception as e:  # each reader has its own exceptions; all mean "cannot read this file"
        raise MiramError(f"{path}: cannot read {kind} file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    arr = np.asarray(arr)
    channels = 0
    if kind in ("tiff", "png") and arr.ndim == 3 and arr.shape[-1] in (3, 4):
        channels = arr.shape[-1]
        if channels == 4:
            meta["alpha"] = arr[..., 3].copy()
        slices = to_grayscale(arr, path)[None]
    elif arr.ndim == 2:
        slices = to_grayscale(arr, path)[None]
    elif arr.ndim == 3:
        stack = np.moveaxis(arr, -1, 0) if kind == "nifti" else arr  # NIfTI: slices along the last axis
        slices = np.stack([to_grayscale(s, path) for s in stack])
    else:
        raise MiramError(f"{path}: expected a slice or a stack of slices, got an array of shape {arr.shape}")
    return Scan(path, kind, slices.astype(np.float64), arr.dtype, arr.shape, channels, meta)


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
    elif scan.kind == "nifti":
        arr = np.moveaxis(slices, 0, -1)  # back to slices along the last axis
    else:
        arr = slices
    if scan.channels:
        arr = np.repeat(arr[..., None], scan.channels, axis=-1)
        if scan.channels == 4 and arr.shape[:2] == scan.meta["alpha"].shape:
            arr[..., 3] = scan.meta["alpha"]  # keep the original transparency
    return _cast(arr, scan.dtype)


def write_scan(scan: Scan, slices, path, coarse=False):
    """Writes results in the scan's format. coarse: half resolution (voxel size doubled in-plane)."""
    arr = to_stored_layout(scan, slices)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = ".nii.gz" if path.lower().endswith(".nii.gz") else os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        if scan.kind == "tiff":
            import tifffile
            tifffile.imwrite(tmp, arr, photometric="rgb" if scan.channels else "minisblack")
        elif scan.kind == "png":
            from PIL import Image
            Image.fromarray(arr).save(tmp, format="PNG")
        elif scan.kind == "nifti":
            import nibabel as nib
            src = scan.meta["image"]
            affine = src.affine.copy()
            if coarse:
                affine[:, :2] = affine[:, :2] * 2
                affine[:3, 3] += (src.affine[:3, 0] + src.affine[:3, 1]) * 0.5  # centre of the 2x2 block
            header = src.header.copy()
            out = type(src)(arr, affine, header)
            out.set_data_dtype(scan.dtype)
            nib.save(out, tmp)
        else:
            ds = scan.meta["dataset"].copy()
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is not None and syntax.is_compressed:
                ds.decompress()
            ds.PixelData = np.ascontiguousarray(arr).tobytes()
            if coarse:
                ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
                if "PixelSpacing" in ds:
                    ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
            ds.save_as(tmp)
        os.replace(tmp, path)  # a failure never leaves a partly written output under the real name
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise MiramError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


# ---- the model on one slice of any size --------------------------------------------------------------

def phase_rank(grid):
    """A rank per patch: patches ordered by their 2x2 phase on the grid, then raster order. Windows of
    this order spread visible patches evenly (at MASK_RATIO 0.75 a window is exactly one phase)."""
    L = grid * grid
    rows, cols = np.divmod(np.arange(L), grid)
    order = np.lexsort((cols, rows, cols % 2, rows % 2))
    rank = np.empty(L, dtype=np.int64)
    rank[order] = np.arange(L)
    return rank


def window_noise(grid, len_keep, damaged=None):
    """(G, L) masking noise for deterministic passes at the trained mask ratio.

    Pass g keeps the g-th window of len_keep undamaged patches, so across the passes every undamaged patch
    is shown (and every patch is hidden in at least one pass when nothing is damaged). Damaged patches get
    the largest noise: never shown, unless fewer than len_keep patches are undamaged.
    """
    L = grid * grid
    damaged = np.zeros(L, bool) if damaged is None else np.asarray(damaged, bool)
    rank = phase_rank(grid)
    good = np.nonzero(~damaged)[0]
    good = good[np.argsort(rank[good])]
    bad = np.nonzero(damaged)[0]
    U = len(good)
    passes = max(1, int(np.ceil(U / len_keep)))
    noise = np.empty((passes, L), np.float32)
    for g in range(passes):
        noise[g, good] = (np.arange(U) - g * len_keep) % U
        noise[g, bad] = U + np.arange(len(bad))
    return noise


def tile_starts(n, tile, stride):
    if n <= tile:
        return [0]
    count = int(np.ceil((n - tile) / stride)) + 1
    return sorted({int(round(s / 2)) * 2 for s in np.linspace(0, n - tile, count)})  # even: coarse grid aligns


def blend_window(tile, ramp):
    """Separable weights that fall towards the tile's edges (never to zero), for seamless blending."""
    i = np.arange(tile)
    w = np.clip(np.minimum(i + 1, tile - i) / ramp, 1e-3, 1.0)
    return np.outer(w, w)


class Restorer:
    """Runs a MIRAM (torch or ONNX Runtime) over tiles of a [0, 1]-scaled slice."""

    def __init__(self, predict, img_size, patch_size, mask_ratio, batch=8, overlap=64, blend=True, correct=None):
        # predict: the MAE, (imgs (B,1,S,S) float32, noise (B,L) float32, ratio) -> fine, coarse (B,1,..);
        # None in a restorer that only inpaints with the fine-tuned model
        self.predict = predict
        self.correct = correct  # the inpainting model: (prefilled, weight (B,1,S,S) float32) -> restored
        self.size, self.p, self.ratio, self.batch, self.blend = img_size, patch_size, mask_ratio, batch, blend
        self.grid = img_size // patch_size
        overlap = min(overlap, img_size // 4)  # small test models: keep a positive stride
        self.stride = img_size - overlap
        self.window = blend_window(img_size, overlap / 2)

    def _tiles(self, canvas):
        H, W = canvas.shape
        return [(y, x) for y in tile_starts(H, self.size, self.stride) for x in tile_starts(W, self.size, self.stride)]

    def _run(self, tiles, noise_rows, ratio):
        """Every tile with every noise row: fine (T, G, S, S), coarse (T, G, S/2, S/2)."""
        T, G = len(tiles), len(noise_rows)
        imgs = np.repeat(np.stack(tiles)[:, None], G, axis=0).astype(np.float32)  # (T*G, 1, S, S)
        noise = np.tile(noise_rows, (T, 1)).astype(np.float32)
        fine, coarse = [], []
        for s in range(0, len(imgs), self.batch):
            f, c = self.predict(imgs[s:s + self.batch], noise[s:s + self.batch], ratio)
            fine.append(f[:, 0])
            coarse.append(c[:, 0])
        fine, coarse = np.concatenate(fine), np.concatenate(coarse)
        return fine.reshape(T, G, *fine.shape[1:]), coarse.reshape(T, G, *coarse.shape[1:])

    def _pad(self, img):
        H, W = img.shape
        ch, cw = max(self.size, H + H % 2), max(self.size, W + W % 2)
        canvas = np.zeros((ch, cw), np.float64)  # zero = background, as in training's padding
        canvas[:H, :W] = img
        return canvas

    def reconstruct(self, img):
        """img (H, W) in [0, 1]-ish -> fine (H, W), coarse (ceil(H/2), ceil(W/2))."""
        H, W = img.shape
        canvas = self._pad(img)
        starts = self._tiles(canvas)
        tiles = [canvas[y:y + self.size, x:x + self.size] for y, x in starts]
        len_keep = int(self.grid ** 2 * (1 - self.ratio))
        noise = window_noise(self.grid, len_keep)
        fine, coarse = self._run(tiles, noise, self.ratio)  # (T, G, S, S)
        hidden = (noise >= len_keep).astype(np.float64)  # (G, L): 1 where the pass predicted the patch
        out_f = self._blend(canvas.shape, starts, fine, hidden, self.p, 1)
        out_c = self._blend((canvas.shape[0] // 2, canvas.shape[1] // 2), starts, coarse, hidden, self.p // 2, 2)
        return out_f[:H, :W], out_c[:(H + 1) // 2, :(W + 1) // 2]

    def _blend(self, shape, starts, preds, hidden, p, down):
        g = self.grid
        weights = hidden.reshape(-1, g, 1, g, 1).repeat(p, 2).repeat(p, 4).reshape(-1, g * p, g * p)  # (G,S,S)
        per_tile = (preds * weights[None]).sum(1) / weights.sum(0)[None]  # mean over the passes that hid it
        return self._stitch(shape, starts, per_tile, down)

    def _stitch(self, shape, starts, per_tile, down=1):
        """Tiles placed at starts (full-resolution coordinates), blended with the window."""
        acc, wsum = np.zeros(shape), np.zeros(shape)
        win = self.window[::down, ::down]
        for (y, x), t in zip(starts, per_tile):
            y, x = y // down, x // down
            acc[y:y + t.shape[0], x:x + t.shape[1]] += t * win
            wsum[y:y + t.shape[0], x:x + t.shape[1]] += win
        return acc / np.maximum(wsum, 1e-12)

    def inpaint(self, img, hole):
        """Fills hole (bool (H, W)) from all other pixels; pixels outside the hole are returned unchanged.

        Per tile, patches touching the hole are always hidden; the passes of window_noise show every other
        patch once, at the trained mask ratio, and the hole's prediction is the mean over the passes.
        """
        H, W = img.shape
        if not hole.any():
            return img.copy()
        if self.correct is not None:
            return self._corrected_fill(img, hole)
        canvas, hole_c = self._pad(img), self._pad(hole.astype(np.float64)) > 0
        shown = np.where(hole_c, 0.0, canvas)  # the damaged values are never shown to the model
        starts = [(y, x) for y, x in self._tiles(canvas) if hole_c[y:y + self.size, x:x + self.size].any()]
        g, p = self.grid, self.p
        len_keep = int(g * g * (1 - self.ratio))
        per_tile = []
        for y, x in starts:
            damaged = hole_c[y:y + self.size, x:x + self.size].reshape(g, p, g, p).any(axis=(1, 3)).reshape(-1)
            if damaged.all():
                raise MiramError("the damaged region covers a whole tile: nothing to inpaint from")
            fine, _ = self._run([shown[y:y + self.size, x:x + self.size]], window_noise(g, len_keep, damaged),
                                self.ratio)
            per_tile.append(fine[0].mean(0))  # mean over the passes
        pred = self._stitch(canvas.shape, starts, per_tile)[:H, :W]
        if self.blend:
            pred = pred + boundary_correction(img - pred, hole)
        return np.where(hole, pred, img)

    def _corrected_fill(self, img, hole):
        """The hole's biharmonic fill plus the inpainting model's correction, tile by tile; the model
        returns its input outside the hole, so only tiles that touch the hole run."""
        from dataset import biharmonic_fill, fill_weight
        H, W = img.shape
        prefilled = biharmonic_fill(img, hole)
        canvas, weight = self._pad(prefilled), self._pad(fill_weight(hole))
        starts = [(y, x) for y, x in self._tiles(canvas) if weight[y:y + self.size, x:x + self.size].any()]
        tiles = np.stack([canvas[y:y + self.size, x:x + self.size] for y, x in starts]).astype(np.float32)
        weights = np.stack([weight[y:y + self.size, x:x + self.size] for y, x in starts]).astype(np.float32)
        corrections = []
        for s in range(0, len(starts), self.batch):
            out = self.correct(tiles[s:s + self.batch, None], weights[s:s + self.batch, None])
            corrections.extend(out[:, 0] - tiles[s:s + self.batch])
        correction = self._stitch(canvas.shape, starts, corrections)[:H, :W]
        return np.where(hole, prefilled + correction, img)


def boundary_correction(residual, hole):
    """The smooth field that makes a prediction meet the known pixels at the hole's edge.

    residual = image - prediction is known outside the hole; its biharmonic fill inside the hole, added to
    the prediction, removes the step at the boundary while keeping the structure the model predicted.
    """
    from dataset import biharmonic_fill
    return np.where(hole, biharmonic_fill(residual, hole), 0.0)


def torch_predictor(model, device):
    import torch
    from models import unpatchify

    @torch.no_grad()
    def predict(imgs, noise, ratio):
        out = model(torch.from_numpy(imgs).to(device), torch.from_numpy(noise).to(device), ratio)
        p, c = model.cfg.patch_size, model.cfg.in_chans
        return (unpatchify(out.pred_fine.float(), p, c).cpu().numpy(),
                unpatchify(out.pred_coarse.float(), p // 2, c).cpu().numpy())
    return predict


def onnx_predictor(path):
    from export_deploy import OnnxMAE
    return OnnxMAE(path)


def torch_corrector(model, device):
    import torch

    @torch.no_grad()
    def correct(prefilled, weight):
        return model(torch.from_numpy(prefilled).to(device), torch.from_numpy(weight).to(device)).float().cpu().numpy()
    return correct


# ---- one scan ----------------------------------------------------------------------------------------

def scale_of(slice_values):
    from dataset import normalize_intensity
    _, (lo, hi) = normalize_intensity(slice_values.astype(np.float32))
    return lo, hi


def enhance_scan(restorer, scan: Scan, mode, mask_scan=None):
    """-> (fine slices, coarse slices) in the scan's own units. Scaled like training's input (robust
    percentiles), but not clipped, so the mapping back is exact."""
    fine, coarse = [], []
    for i, s in enumerate(scan.slices):
        lo, hi = scale_of(s)
        x = (s - lo) / (hi - lo)
        if mode == "inpaint":
            hole = mask_scan.slices[i] != 0
            f = restorer.inpaint(x, hole)
            c = None
        else:
            f, c = restorer.reconstruct(x)
        out = f * (hi - lo) + lo
        if mode == "inpaint":
            out = np.where(hole, out, s)  # exactly the input's values outside the region
        fine.append(out)
        coarse.append(None if c is None else c * (hi - lo) + lo)
    return np.stack(fine), (None if coarse[0] is None else np.stack(coarse))


def default_output(inp, out_dir, suffix="_restored"):
    base = os.path.basename(inp)
    ext = ".nii.gz" if base.lower().endswith(".nii.gz") else os.path.splitext(base)[1]
    return os.path.join(out_dir, base[:len(base) - len(ext)] + suffix + ext)


def coarse_path(path):
    ext = ".nii.gz" if path.lower().endswith(".nii.gz") else os.path.splitext(path)[1]
    return path[:len(path) - len(ext)] + "_coarse" + ext


def check_writable(inp, out, overwrite):
    if os.path.abspath(out) == os.path.abspath(inp) and not overwrite:
        raise MiramError(f"{out}: is the input itself; choose another --output (or --overwrite)")
    if os.path.exists(out) and not overwrite:
        raise MiramError(f"{out}: already exists; choose another --output or pass --overwrite")
    if kind_of(out) != kind_of(inp):
        raise MiramError(f"{out}: the output keeps the input's format ({kind_of(inp)}); use its extension")


def process_file(restorer, inp, out, mode, mask_path, scale, overwrite):
    scan = read_scan(inp)
    mask_scan = None
    if mode == "inpaint":
        if not mask_path:
            raise MiramError("--mode inpaint needs --mask (an image, non-zero = region to fill)")
        mask_scan = read_scan(mask_path)
        if mask_scan.slices.shape != scan.slices.shape:
            raise MiramError(f"{mask_path}: mask is {mask_scan.slices.shape} but {inp} is {scan.slices.shape}")
    outs = [out] + ([coarse_path(out)] if scale == "coarse" and mode == "reconstruct" else [])
    for o in outs:
        check_writable(inp, o, overwrite)
    fine, coarse = enhance_scan(restorer, scan, mode, mask_scan)
    write_scan(scan, fine, out)
    if len(outs) > 1:
        write_scan(scan, coarse, outs[1], coarse=True)
    return outs


def inpainting_model_path(args, cfg):
    """The fine-tuned inpainting model to use, or None (then inpaint uses the MAE's own prediction)."""
    if args.mode != "inpaint" or args.mae_fill:
        return None
    if args.inpaint_checkpoint:
        return args.inpaint_checkpoint  # asked for by name: a missing file is an error, not a fallback
    path = os.path.join(cfg.OUTPUT_PATH, "miram_inpaint.onnx" if args.backend == "onnx" else "best_miram_inpaint.pth")
    if os.path.isfile(path):
        return path
    print(f"note: {path} not found (train.py --inpaint makes it): inpainting with the MAE's own prediction")
    return None


def build_restorer(args, cfg):
    """The Restorer for args' mode and backend. Inpainting with the fine-tuned model loads only that model:
    it holds the pre-trained MAE's weights and configuration, so the MAE itself is not needed."""
    fill_path = inpainting_model_path(args, cfg)
    predict = correct = None
    if args.backend == "onnx":
        from export_deploy import OnnxInpainter
        if fill_path:
            correct = OnnxInpainter(fill_path)
            mc = correct.model_config
        else:
            predict = onnx_predictor(args.checkpoint or os.path.join(cfg.OUTPUT_PATH, "miram_mae.onnx"))
            mc = predict.model_config
    else:
        from models import build_from_checkpoint, pick_device
        device = pick_device(cfg.DEVICE)
        if fill_path:
            inpainter, _ = build_from_checkpoint(fill_path, "inpaint", map_location=device)
            correct, mc = torch_corrector(inpainter.to(device).eval(), device), inpainter.cfg.to_dict()
        else:
            model, _ = build_from_checkpoint(args.checkpoint or os.path.join(cfg.OUTPUT_PATH, "best_miram_mae.pth"),
                                             "mae", map_location=device)
            model = model.to(device).eval()
            predict, mc = torch_predictor(model, device), model.cfg.to_dict()
    return Restorer(predict, mc["img_size"], mc["patch_size"], mc["mask_ratio"], batch=args.batch,
                    blend=not args.no_blend, correct=correct)


def run_inputs(restorer, args, cfg):
    inp = args.input
    if os.path.isdir(inp):
        if args.mask:
            raise MiramError("--mask works with a single --input file")
        files = sorted(os.path.join(inp, f) for f in os.listdir(inp)
                       if f.lower().endswith(SUPPORTED) and not f.startswith("."))
        if not files:
            raise MiramError(f"{inp}: no {', '.join(SUPPORTED)} files in this folder")
        out_dir = args.output or os.path.join(cfg.OUTPUT_PATH, "enhanced")
        if os.path.abspath(out_dir) == os.path.abspath(inp) and not args.overwrite:
            raise MiramError(f"{out_dir}: is the input folder; choose another --output")
        from tqdm import tqdm
        written, failed = [], 0
        for f in tqdm(files, desc="enhancing", unit="scan", file=sys.stdout, disable=not sys.stdout.isatty()):
            try:
                written += process_file(restorer, f, default_output(f, out_dir, ""), args.mode, None, args.scale,
                                        args.overwrite)
            except MiramError as e:
                print(f"skipped: {e}", file=sys.stderr)
                failed += 1
        print(f"{len(files) - failed} of {len(files)} scans restored into {out_dir}")
        if failed:
            raise MiramError(f"{failed} of {len(files)} scans in {inp} could not be restored (see above)")
        return written
    out = args.output or default_output(inp, cfg.OUTPUT_PATH)
    written = process_file(restorer, inp, out, args.mode, args.mask, args.scale, args.overwrite)
    print(f"{args.mode}: {inp} -> " + ", ".join(written))
    return written


def interactive(restorer, args, cfg, stdin=None):
    stdin = stdin or sys.stdin
    print("MIRAM enhance: type the path of a scan (or a folder) to restore; empty line or 'q' quits.")
    written = []
    while True:
        print("scan> ", end="", flush=True)
        line = stdin.readline()
        if not line or line.strip().lower() in ("", "q", "quit", "exit"):
            print("bye")
            return written
        args.input, args.output = line.strip().strip("'\""), None
        try:
            written += run_inputs(restorer, args, cfg)
        except MiramError as e:
            print(f"error: {e}")


def main(argv=None, stdin=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    restorer = build_restorer(args, cfg)
    if args.input is None:
        return interactive(restorer, args, cfg, stdin)
    return run_inputs(restorer, args, cfg)


if __name__ == "__main__":
    run_cli(main)

"""Data: reading slices, normalising them, the subject-grouped split, augmentation, and the demo set.

Layout (the spec's): <DATASET_PATH>/HR/*.tif with MASK/*.tif of the same names (non-zero = tumor), or a
flat folder of images. Everything is decoded once into memory: 4,000 slices at 224x224 are 800 MB as float32.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from config import MiramError

if TYPE_CHECKING:  # annotations only
    import torch

# torch is imported inside the functions that need it: reading and normalising images (used by the
# ONNX deployment path of enhance.py and classify.py) must work with numpy and onnxruntime alone.

IMAGE_EXTS = (".tif", ".tiff", ".png")


class DataError(MiramError):
    pass


# ---- reading one image -------------------------------------------------------------------------------

def read_image(path: str) -> np.ndarray:
    """Reads a 2-D slice as float32 (H, W), converting RGB/multi-channel to grayscale.

    Raises DataError naming the file for anything that is not a readable, finite 2-D image.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".tif", ".tiff"):
            arr = read_tiff(path)
        elif ext == ".png":
            from PIL import Image
            with Image.open(path) as im:
                arr = np.asarray(im)
        else:
            raise DataError(f"{path}: unsupported format {ext!r} (expected {', '.join(IMAGE_EXTS)})")
    except DataError:
        raise
    except Exception as e:  # every decoder has its own exception zoo; all mean "cannot read this file"
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return to_grayscale(np.asarray(arr), path)


def read_tiff(path: str) -> np.ndarray:
    """A TIFF as an array with colour samples (if any) last, using the file's own axes: a 3-page stack and
    a planar RGB image have the same shape, only the TIFF tags tell them apart."""
    import tifffile
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    if "S" in axes and axes.index("S") != len(axes) - 1:
        arr = np.moveaxis(arr, axes.index("S"), -1)
    return arr


def to_grayscale(arr: np.ndarray, path: str = "image") -> np.ndarray:
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{path}: unsupported pixel type {arr.dtype}")
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # channels last (RGB, RGBA)
        rgb = arr[..., :3].astype(np.float64)
        arr = rgb @ np.array([0.2125, 0.7154, 0.0721])  # ITU-R 709 luma, as scikit-image's rgb2gray
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D slice, got an array of shape {arr.shape} (a 3-D stack?)")
    if min(arr.shape) < 8:
        raise DataError(f"{path}: image too small ({arr.shape[0]}x{arr.shape[1]})")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or infinite pixel values")
    return arr


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


def foreground_patches(images, patch, threshold):
    """The patches the classifier encodes: those whose mean intensity exceeds threshold (all, when it is
    negative). images (B, 1, S, S) in [0, 1] -> keep (B, K) int64 patch indices, foreground first in raster
    order, and valid (B, K) bool. K is the batch's largest count; an image with fewer is padded with its
    first background patches, marked invalid (the encoder masks them out of attention, so a result does not
    depend on the rest of the batch). numpy only: the ONNX runtime path uses it without torch."""
    images = np.asarray(images, np.float32)
    B, g = images.shape[0], images.shape[-1] // patch
    means = images[:, 0, :g * patch, :g * patch].reshape(B, g, patch, g, patch).mean(axis=(2, 4)).reshape(B, -1)
    fg = means > threshold if threshold >= 0 else np.ones_like(means, bool)
    counts = np.maximum(fg.sum(axis=1), 1)  # a blank image still gives the encoder one patch
    K = int(counts.max())
    keep = np.argsort(~fg, axis=1, kind="stable")[:, :K].astype(np.int64)
    valid = np.arange(K)[None, :] < counts[:, None]
    return keep, valid


# ---- damaged regions and their classical fill (inpainting) -------------------------------------------

# The synthetic damage of the inpainting fine-tune and benchmark, per kind: nominal sizes in pixels.
DAMAGE_SIZES = {"block": {"small": 12, "medium": 24, "large": 48},   # side
                "stripe": {"small": 4, "medium": 8, "large": 16},    # height of a band across the brain
                "blob": {"small": 8, "medium": 16, "large": 28}}     # mean radius
# Inside a hole, the model's correction of the classical fill ramps from 0 at the edge to full weight
# this many pixels in: the fill is right at the known pixels, and the correction must not step there.
FILL_RAMP_PX = 6


def synthetic_damage(kind, size, brain, rng):
    """A damaged region (bool, brain's shape) of the given kind and size, centred on a brain pixel."""
    from scipy import ndimage
    H, W = brain.shape
    inner = ndimage.binary_erosion(brain, iterations=8)
    ys, xs = np.nonzero(inner if inner.any() else brain)
    if len(ys) == 0:
        ys, xs = np.array([H // 2]), np.array([W // 2])
    k = rng.integers(len(ys))
    cy, cx = ys[k], xs[k]
    yy, xx = np.mgrid[:H, :W]
    if kind == "block":
        h = size // 2
        return (abs(yy - cy) <= h) & (abs(xx - cx) <= h)
    if kind == "stripe":
        cols = brain.any(axis=0) if brain.any() else np.ones(W, bool)
        return (abs(yy - cy) < size / 2) & cols[None, :]
    if kind != "blob":
        raise ValueError(f"unknown damage kind {kind!r}")
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + sum(rng.uniform(0, 0.25) * np.cos(j * theta + rng.uniform(0, 6.3)) for j in range(2, 5))
    return np.hypot(yy - cy, xx - cx) < size * wobble


def random_damage(brain, rng):
    """One region of a random kind, its size drawn around the kind's range (0.7x smallest to 1.3x largest)."""
    kind = list(DAMAGE_SIZES)[rng.integers(len(DAMAGE_SIZES))]
    sizes = DAMAGE_SIZES[kind].values()
    return synthetic_damage(kind, int(rng.uniform(0.7 * min(sizes), 1.3 * max(sizes))), brain, rng)


def biharmonic_fill(img, hole, margin=8):
    """img with hole (bool) filled by scikit-image's biharmonic inpainting, solved on the hole's bounding
    box plus a margin only (the same fill as on the whole image, far cheaper for a small hole); pixels
    outside the hole are returned unchanged."""
    from skimage.restoration import inpaint_biharmonic
    img = np.asarray(img, np.float64)
    if not hole.any():
        return img.copy()
    ys, xs = np.nonzero(hole)
    y0, y1 = max(0, ys.min() - margin), min(hole.shape[0], ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(hole.shape[1], xs.max() + margin + 1)
    out = img.copy()
    out[y0:y1, x0:x1] = inpaint_biharmonic(np.where(hole, 0.0, img)[y0:y1, x0:x1], hole[y0:y1, x0:x1])
    return np.where(hole, out, img)


def fill_weight(hole, ramp=FILL_RAMP_PX):
    """Per pixel, how much of the model's correction applies: 0 outside the hole, rising to 1 at ramp px
    from its edge."""
    from scipy import ndimage
    return np.minimum(1.0, ndimage.distance_transform_edt(hole) / ramp)


def damaged_set(images, copies, seed):
    """copies synthetic damaged regions on each slice of images (N, 1, S, S) in [0, 1], drawn from seed:
    float32 tensors (N * copies, 1, S, S) of the biharmonic pre-fill, the fill weight and the original."""
    import torch
    rng = np.random.default_rng(seed)
    prefilled, weights, targets = [], [], []
    for img in np.asarray(images, np.float64)[:, 0]:
        for _ in range(copies):
            hole = random_damage(img > 0.1, rng)
            prefilled.append(biharmonic_fill(img, hole))
            weights.append(fill_weight(hole))
            targets.append(img)
    return tuple(torch.from_numpy(np.stack(a)[:, None].astype(np.float32)) for a in (prefilled, weights, targets))


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


# ---- finding files and subjects ----------------------------------------------------------------------

def list_images(folder, exts=IMAGE_EXTS):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(exts) and not f.startswith("."))


NIFTI_EXTS = (".nii", ".nii.gz")


def _stem(path):
    base = os.path.basename(path)
    for ext in (".nii.gz",) + IMAGE_EXTS + (".nii",):
        if base.lower().endswith(ext):
            return base[:-len(ext)]
    return os.path.splitext(base)[0]


@dataclass
class Source:
    """One 2-D slice to read: a file, or slice `index` (along `axis`) of a volume."""
    image: str
    mask: str = None
    subject: str = ""
    name: str = ""
    index: int = None
    axis: int = 2


def _pair_by_stem(images, mask_dir, image_dir):
    """Masks of the same names in mask_dir; warns about masks without image and images without mask."""
    exts = NIFTI_EXTS if images and images[0].lower().endswith(NIFTI_EXTS) else IMAGE_EXTS
    masks = {_stem(p): p for p in list_images(mask_dir, exts)} if mask_dir and os.path.isdir(mask_dir) else {}
    pairs = [(p, masks.get(_stem(p))) for p in images]
    if masks:
        orphans = sorted(set(masks) - {_stem(p) for p in images})
        unlabeled = sum(m is None for _, m in pairs)
        if orphans:
            warnings.warn(f"{len(orphans)} mask(s) in {mask_dir} have no image in {image_dir} and are ignored "
                          f"(first: {orphans[0]})", stacklevel=3)
        if unlabeled:
            warnings.warn(f"{unlabeled} image(s) in {image_dir} have no mask in {mask_dir}: used for pre-training, "
                          "left out of classification", stacklevel=3)
    return pairs


def discover(root: str, subject_pattern: str = r"^(.+?)(?:_\d+)?$", slice_axis: int = 2):
    """(layout, [Source]) for the layouts users have:

    - "spec": <root>/HR/*.tif|png with MASK/ of the same names, or a flat folder of images;
    - "kaggle_lgg": <root>[/kaggle_3m]/<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif (subject = folder);
    - "nifti": <root>[/HR]/*.nii[.gz], masks of the same names in MASK/ or masks/ (optional); every slice along
      slice_axis (empty slices are skipped when read; subject = volume).
    """
    if not os.path.isdir(root):
        raise DataError(f"Dataset empty: {root} does not exist (set DATASET_PATH or MIRAM_DATA_PATH)")
    image_dir = os.path.join(root, "HR") if os.path.isdir(os.path.join(root, "HR")) else root
    volumes = list_images(image_dir, NIFTI_EXTS)
    if volumes:
        import nibabel as nib
        mask_dir = next((d for d in (os.path.join(root, "MASK"), os.path.join(root, "masks")) if os.path.isdir(d)), None)
        sources = []
        for vol, mask in _pair_by_stem(volumes, mask_dir, image_dir):
            try:
                shape = nib.load(vol).shape
            except Exception as e:  # nibabel raises several kinds for a bad header
                warnings.warn(f"skipping {vol}: cannot read NIfTI header ({type(e).__name__})", stacklevel=2)
                continue
            if len(shape) < 3:
                raise DataError(f"{vol}: a NIfTI volume must be 3-D, got shape {shape}")
            sources += [Source(vol, mask, _stem(vol), f"{_stem(vol)}[{i}]", i, slice_axis)
                        for i in range(shape[slice_axis])]
        return "nifti", sources
    kaggle = os.path.join(root, "kaggle_3m") if os.path.isdir(os.path.join(root, "kaggle_3m")) else root
    patients = sorted(d for d in os.listdir(kaggle) if os.path.isdir(os.path.join(kaggle, d)) and d not in ("HR", "MASK"))
    if patients and any(f.endswith("_mask.tif") for d in patients for f in os.listdir(os.path.join(kaggle, d))):
        sources = []
        for d in patients:
            folder = os.path.join(kaggle, d)
            for p in list_images(folder):
                if _stem(p).endswith("_mask"):
                    continue
                mask = os.path.join(folder, _stem(p) + "_mask" + os.path.splitext(p)[1])
                sources.append(Source(p, mask if os.path.isfile(mask) else None, d, os.path.basename(p)))
        if not sources:
            raise DataError(f"Dataset empty: no images in the patient folders of {kaggle}")
        return "kaggle_lgg", sources
    images = list_images(image_dir)
    if not images:
        raise DataError(f"Dataset empty: no {'/'.join(IMAGE_EXTS)} images in {image_dir} "
                        f"(check DATASET_PATH; images belong in HR/)")
    pairs = _pair_by_stem(images, os.path.join(root, "MASK"), image_dir)
    return "spec", [Source(p, m, subject_of(p, subject_pattern), os.path.basename(p)) for p, m in pairs]


def find_pairs(root: str):
    """[(image_path, mask_path or None)] of a spec-layout folder."""
    return [(s.image, s.mask) for s in discover(root)[1]]


class _VolumeCache:
    """Keeps the last two NIfTI volumes read (an image and its mask), so the slices of a volume decode
    each file once."""

    def __init__(self):
        self.volumes = {}

    def slice(self, path, index, axis):
        if path not in self.volumes:
            import nibabel as nib
            try:
                data = np.asanyarray(nib.load(path).dataobj)
            except Exception as e:
                raise DataError(f"{path}: cannot read NIfTI volume ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
            if len(self.volumes) >= 2:
                self.volumes.pop(next(iter(self.volumes)))  # the oldest
            self.volumes[path] = data
        return to_grayscale(np.take(self.volumes[path], index, axis=axis), f"{path}[{index}]")


def read_source(src: Source, cache: _VolumeCache):
    """-> (image (H, W) float32, mask (H, W) or None); DataError naming the file when it cannot."""
    if src.index is None:
        img = read_image(src.image)
        mask = read_image(src.mask) if src.mask else None
    else:
        img = cache.slice(src.image, src.index, src.axis)
        mask = cache.slice(src.mask, src.index, src.axis) if src.mask else None
    if mask is not None and mask.shape != img.shape:
        raise DataError(f"{src.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
                        f"{img.shape[0]}x{img.shape[1]}")
    return img, mask


def subject_of(path: str, pattern: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    m = re.match(pattern, stem)
    return m.group(1) if m and m.group(1) else stem


def split_by_subject(subjects, val_fraction: float, seed: int):
    """Indices (train, val): whole subjects go to one side. At least one subject on each side when possible."""
    unique = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    n_val = min(max(1, round(len(unique) * val_fraction)), len(unique) - 1) if len(unique) > 1 else 0
    val_subjects = set(order[:n_val])
    train = [i for i, s in enumerate(subjects) if s not in val_subjects]
    val = [i for i, s in enumerate(subjects) if s in val_subjects]
    return train, val


# ---- the in-memory slice set -------------------------------------------------------------------------

@dataclass
class SliceSet:
    images: torch.Tensor   # (N, 1, S, S) float32 in [0, 1]
    masks: torch.Tensor    # (N, 1, S, S) bool, tumor pixels (all False where no mask file)
    labels: torch.Tensor   # (N,) float32, 1 = the mask has a non-zero pixel
    has_mask: torch.Tensor  # (N,) bool
    names: list
    subjects: list

    def __len__(self):
        return len(self.names)

    def subset(self, idx):
        import torch
        idx = list(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        return SliceSet(self.images[t], self.masks[t], self.labels[t], self.has_mask[t],
                        [self.names[i] for i in idx], [self.subjects[i] for i in idx])


def load_slices(root: str, size: int, subject_pattern: str, quiet=False, slice_axis: int = 2) -> SliceSet:
    """Decodes every readable slice (and its mask) once; unreadable files are skipped with a warning each."""
    import torch
    layout, sources = discover(root, subject_pattern, slice_axis)
    images, masks, labels, has_mask, names, subjects = [], [], [], [], [], []
    skipped = empty = 0
    cache = _VolumeCache()
    iterator = sources
    if not quiet:
        from tqdm import tqdm
        iterator = tqdm(sources, desc=f"loading {root}", unit="slice", leave=False, file=sys.stdout,
                        disable=not sys.stdout.isatty())
    for src in iterator:
        try:
            img, mask = read_source(src, cache)
        except DataError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            skipped += 1
            continue
        if float(img.max()) == float(img.min()):
            if src.index is not None:  # volumes have empty slices at their edges: expected, not an error
                empty += 1
            else:
                warnings.warn(f"skipping {src.image}: constant image (every pixel {img.flat[0]:g}), nothing to "
                              "learn from", stacklevel=2)
                skipped += 1
            continue
        norm, _ = normalize_intensity(img)
        images.append(fit_to_square(norm, size))
        if mask is not None:
            masks.append(fit_to_square((mask != 0).astype(np.float32), size, order=0) > 0.5)
            labels.append(float((mask != 0).any()))
        else:
            masks.append(np.zeros((size, size), dtype=bool))
            labels.append(0.0)
        has_mask.append(mask is not None)
        names.append(src.name)
        subjects.append(src.subject)
    if not images:
        raise DataError(f"Dataset empty: none of the {len(sources)} slices in {root} ({layout} layout) could be read")
    if skipped and not quiet:
        print(f"warning: skipped {skipped} of {len(sources)} files that could not be read (see warnings above)")
    return SliceSet(torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(masks))[:, None],
                    torch.tensor(labels), torch.tensor(has_mask), names, subjects)


def resolve_data_path(cfg, quiet=False) -> str:
    """The configured DATASET_PATH, or the embedded demo set (built on first use)."""
    if cfg.DATASET_PATH:
        return cfg.DATASET_PATH
    if not os.path.isdir(os.path.join(cfg.DEMO_DATA_PATH, "HR")):
        if not quiet:
            print(f"no DATASET_PATH configured: building the demo set in {cfg.DEMO_DATA_PATH} "
                  "(slices of nilearn's MNI152 T1 template, half with synthetic tumors)")
        build_demo_data(cfg.DEMO_DATA_PATH)
    elif not quiet:
        print(f"no DATASET_PATH configured: using the demo set in {cfg.DEMO_DATA_PATH}")
    return cfg.DEMO_DATA_PATH


def load_split(cfg, quiet=False, trained_on=()):
    """(train, val) SliceSets of the configured data, split by subject with cfg.SPLIT_SEED. trained_on:
    (path, checkpoint state) pairs the caller builds on; a validation subject any of them was trained on is
    refused (another SPLIT_SEED, VAL_FRACTION, SUBJECT_PATTERN or data set would leak it into validation)."""
    root = resolve_data_path(cfg, quiet)
    data = load_slices(root, cfg.IMG_SIZE, cfg.SUBJECT_PATTERN, quiet, cfg.SLICE_AXIS)
    train_idx, val_idx = split_by_subject(data.subjects, cfg.VAL_FRACTION, cfg.SPLIT_SEED)
    if not val_idx:
        # One subject only: hold out its last slices rather than validate on training images.
        n_val = max(1, round(len(data) * cfg.VAL_FRACTION)) if len(data) > 1 else 0
        train_idx, val_idx = list(range(len(data) - n_val)), list(range(len(data) - n_val, len(data)))
        if not quiet:
            print("warning: one subject only; validating on its last slices, which neighbour training slices")
    else:  # (with one subject, validation shares it with training by construction, and the warning says so)
        for path, state in trained_on:
            refuse_trained_subjects([data.subjects[i] for i in val_idx], state, path)
    return data.subset(train_idx), data.subset(val_idx) if val_idx else data.subset(train_idx)


def split_record(cfg, train_set, *parents):
    """Checkpoint fields naming every subject a model learned from: its own training split's and those of
    the checkpoints it started from (parents), so that later scripts can check validation is held out."""
    subjects = set(train_set.subjects)
    for parent in parents:
        subjects.update(parent.get("train_subjects", ()))
    return {"train_subjects": sorted(subjects),
            "split": {"SPLIT_SEED": cfg.SPLIT_SEED, "VAL_FRACTION": cfg.VAL_FRACTION,
                      "SUBJECT_PATTERN": cfg.SUBJECT_PATTERN}}


def recorded_split(state):
    """The split settings a checkpoint was trained under, for the messages below."""
    return ", ".join(f"{k}={v!r}" for k, v in state.get("split", {}).items()) or "not recorded"


def refuse_other_split(state, record, path):
    """A resumed run keeps the subjects its checkpoint trained on as training subjects: under another split
    they could be validating it now (record: this run's split_record)."""
    dropped = sorted(set(state.get("train_subjects", ())) - set(record["train_subjects"]))
    if dropped:
        raise DataError(f"{path}: cannot resume under this split: the checkpoint trained on {len(dropped)} "
                        f"subject(s) that this split does not train on (e.g. {dropped[0]}); use the checkpoint's "
                        f"split ({recorded_split(state)}) and data, or --no-resume to start over")


def refuse_trained_subjects(val_subjects, state, path):
    # Checkpoints from before the record was kept carry no "train_subjects": nothing to check against.
    leaked = sorted(set(val_subjects) & set(state.get("train_subjects", ())))
    if leaked:
        raise DataError(f"{path} was trained on {len(leaked)} of the {len(set(val_subjects))} validation subjects "
                        f"(e.g. {leaked[0]}), so its validation figures would be inflated: use the split it was "
                        f"trained with ({recorded_split(state)}) and the same data")


# ---- augmentation ------------------------------------------------------------------------------------

def augment_params(n: int, generator: torch.Generator):
    """Random parameters for n images: rotation +-10 deg, scale 0.9-1.1, shift +-5%, left-right flip,
    gamma 0.7-1.4. Drawn for a whole global batch, so every process of a distributed run (and a single
    process with the same global batch) gives each image the same augmentation."""
    import torch

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)
    return {"angle": uniform(-10, 10) * torch.pi / 180, "scale": uniform(0.9, 1.1),
            "flip": torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0),
            "tx": uniform(-0.05, 0.05), "ty": uniform(-0.05, 0.05),
            "gamma": torch.exp(uniform(np.log(0.7), np.log(1.4)))}


def apply_augment(imgs: torch.Tensor, params) -> torch.Tensor:
    """imgs (B, C, H, W) in [0, 1] -> augmented, with params of augment_params(B, ...)."""
    import torch
    import torch.nn.functional as F
    B = imgs.shape[0]
    cos, sin = torch.cos(params["angle"]) / params["scale"], torch.sin(params["angle"]) / params["scale"]
    flip = params["flip"]
    theta = torch.stack([torch.stack([cos * flip, -sin, params["tx"]], 1),
                         torch.stack([sin * flip, cos, params["ty"]], 1)], 1)
    grid = F.affine_grid(theta.to(imgs), list(imgs.shape), align_corners=False)
    out = F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp(0, 1) ** params["gamma"].to(imgs).view(B, 1, 1, 1)


def augment(imgs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augments a batch with parameters drawn from `generator` (seeded run: reproducible)."""
    return apply_augment(imgs, augment_params(imgs.shape[0], generator))


def batches(n: int, batch_size: int, generator: torch.Generator = None, drop_last: bool = False):
    """Index batches over n items, shuffled when a generator is given."""
    import torch
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


# ---- the embedded demo data --------------------------------------------------------------------------

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def template_path() -> str:
    """The MNI152 T1 template inside the installed nilearn wheel (read from disk, never downloaded)."""
    import importlib.util
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise DataError("the demo data needs the nilearn package (pip install -r requirements.txt)")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", TEMPLATE)
    if not os.path.isfile(path):
        raise DataError(f"{path}: the MNI152 template is missing from the installed nilearn")
    return path


def paint_tumor(img: np.ndarray, rng: np.random.Generator):
    """Paints an irregular lesion (core + surrounding edema) inside the brain of a [0, 255] slice.

    Returns (image, mask) with mask 2 = core, 1 = edema, 0 = background. Size, shape, position and contrast
    vary with rng; the lesion never leaves the brain.
    """
    from scipy import ndimage
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(img, 2) > 25)
    inner = ndimage.binary_erosion(brain, iterations=12)
    ys, xs = np.nonzero(inner if inner.any() else brain)
    k = rng.integers(len(ys))
    cy, cx = ys[k], xs[k]
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    r = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + sum(rng.uniform(0, 0.18) * np.cos(j * theta + rng.uniform(0, 2 * np.pi)) for j in range(2, 6))
    r0 = rng.uniform(8, 22)
    core = r < r0 * wobble
    edema = (r < r0 * rng.uniform(1.4, 2.1) * wobble) & ~core
    core &= brain
    edema &= brain
    soft_core = ndimage.gaussian_filter(core.astype(float), 1.2)
    soft_edema = ndimage.gaussian_filter((core | edema).astype(float), 2.0)
    brain_mean = img[brain].mean()
    core_level = brain_mean * rng.choice([rng.uniform(0.15, 0.4), rng.uniform(1.5, 1.9)])  # dark or bright
    texture = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.5) * 0.12 * core_level
    out = img * (1 - soft_edema * rng.uniform(0.2, 0.35))  # edema: hypointense on T1
    out = out * (1 - soft_core) + (core_level + texture) * soft_core
    mask = np.zeros(img.shape, np.uint8)
    mask[edema] = 1
    mask[core] = 2
    return np.clip(out, 0, 255), mask


def build_demo_data(dest: str, seed: int = 0, step: int = 1, slab: int = 10, gap: int = 5):
    """Writes axial, coronal and sagittal slices of the MNI152 T1 template to dest/HR and dest/MASK.

    Slices are taken every `step` mm and grouped into slabs of `slab` slices with `gap` skipped positions
    between slabs; a slab is the "subject" of its slices (the file name's prefix), so a subject-grouped split
    holds out whole slabs. Every other slice of a slab gets a synthetic tumor: its neighbours, 1 mm away,
    show nearly the same anatomy without one, so a classifier has to find the lesion, not the anatomy.
    """
    import nibabel as nib
    import tifffile
    vol = np.asarray(nib.load(template_path()).dataobj, dtype=np.float32)  # (x, y, z), 1 mm, [0, 255]
    rng = np.random.default_rng(seed)
    tmp = dest.rstrip("/") + ".partial"
    os.makedirs(os.path.join(tmp, "HR"), exist_ok=True)
    os.makedirs(os.path.join(tmp, "MASK"), exist_ok=True)
    views = {"axial": 2, "coronal": 1, "sagittal": 0}
    count = 0
    for view, axis in views.items():
        positions = [i for i in range(0, vol.shape[axis], step)
                     if (np.take(vol, i, axis=axis) > 25).mean() > 0.15]
        for n, pos in enumerate(positions):
            slab_id, within = divmod(n, slab + gap)
            if within >= slab:
                continue
            sl = np.rot90(np.take(vol, pos, axis=axis))  # superior / anterior up
            mask = np.zeros(sl.shape, np.uint8)
            if (within + slab_id) % 2:
                sl, mask = paint_tumor(sl, rng)
            name = f"mni_{view}_slab{slab_id:02d}_{pos:03d}.tif"
            tifffile.imwrite(os.path.join(tmp, "HR", name), np.round(sl).astype(np.uint8))
            tifffile.imwrite(os.path.join(tmp, "MASK", name), mask)
            count += 1
    if os.path.isdir(dest):
        import shutil
        shutil.rmtree(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    os.replace(tmp, dest)  # a half-built set is never mistaken for a finished one
    return count


def stored_dtype(path):
    """The pixel type a file stores, read from its header only."""
    low = path.lower()
    try:
        if low.endswith((".tif", ".tiff")):
            import tifffile
            with tifffile.TiffFile(path) as t:
                return str(t.series[0].dtype)
        if low.endswith(".png"):
            from PIL import Image
            with Image.open(path) as im:
                return f"png:{im.mode}"
        if low.endswith(NIFTI_EXTS):
            import nibabel as nib
            return str(nib.load(path).get_data_dtype())
    except Exception:
        return "unreadable"
    return "?"


def inspect(root, subject_pattern=r"^(.+?)(?:_\d+)?$", slice_axis=2):
    """What a folder holds, as load_slices would see it: a dict, and a report printed by main()."""
    from collections import Counter
    layout, sources = discover(root, subject_pattern, slice_axis)
    cache = _VolumeCache()
    sizes, dtypes, unreadable = Counter(), Counter(), []
    labelled = tumor = empty = 0
    subjects = set()
    for src in sources:
        dtypes[stored_dtype(src.image)] += src.index is None or src.index == 0
        try:
            img, mask = read_source(src, cache)
        except DataError as e:
            unreadable.append(str(e))
            continue
        if float(img.max()) == float(img.min()):  # skipped by load_slices too
            if src.index is not None:
                empty += 1
            else:
                unreadable.append(f"{src.image}: constant image (every pixel {img.flat[0]:g})")
            continue
        sizes[f"{img.shape[0]}x{img.shape[1]}"] += 1
        subjects.add(src.subject)
        if mask is not None:
            labelled += 1
            tumor += bool((mask != 0).any())
    dtypes = Counter({k: v for k, v in dtypes.items() if v})
    return {"layout": layout, "slices": len(sources) - len(unreadable) - empty, "empty_slices_skipped": empty,
            "subjects": len(subjects), "labelled": labelled, "with_tumor": tumor,
            "tumor_share": tumor / labelled if labelled else None, "sizes": dict(sizes.most_common()),
            "dtypes": dict(dtypes), "unreadable": unreadable}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Inspect a data folder, or build the demo data set.")
    parser.add_argument("--inspect", metavar="PATH", help="report layout, slices, subjects, tumor share, sizes, "
                                                          "dtypes and unreadable files of a data folder")
    parser.add_argument("--build-demo", metavar="DIR", help="write the demo set (HR/ and MASK/) into DIR")
    parser.add_argument("--slice-axis", type=int, default=2, help="NIfTI: the axis to slice along")
    args = parser.parse_args(argv)
    if args.build_demo:
        n = build_demo_data(args.build_demo)
        print(f"wrote {n} slices to {args.build_demo}/HR and their masks to {args.build_demo}/MASK")
    elif args.inspect:
        from config import load_config
        cfg = load_config()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = inspect(args.inspect, cfg.SUBJECT_PATTERN, args.slice_axis)
        share = f"{r['tumor_share']:.1%}" if r["tumor_share"] is not None else "n/a (no masks)"
        print(f"{args.inspect}: {r['layout']} layout\n"
              f"  slices     {r['slices']}" + (f" ({r['empty_slices_skipped']} empty slices skipped)"
                                               if r["empty_slices_skipped"] else "") + "\n"
              f"  subjects   {r['subjects']}\n"
              f"  labelled   {r['labelled']} (with a mask), {r['with_tumor']} with tumor: tumor share {share}\n"
              f"  sizes      " + ", ".join(f"{k} x{v}" for k, v in r["sizes"].items()) + "\n"
              "  dtypes     " + ", ".join(f"{k} x{v}" for k, v in r["dtypes"].items()) + "\n"
              f"  unreadable {len(r['unreadable'])}" + "".join(f"\n    {u}" for u in r["unreadable"]))
        for w in caught:
            print(f"  note: {w.message}")
        return r
    else:
        parser.print_help()


if __name__ == "__main__":
    from config import run_cli
    run_cli(main)

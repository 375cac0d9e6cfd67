"""Data: layouts of slices on disk, the subject-grouped split, augmentation, and the demo set.

Layouts (LAYOUTS, tried in order): <DATASET_PATH>/HR/ images with MASK/ of the same names (the spec's), or a
flat folder of images; NIfTI volumes; the Kaggle LGG folders. Every image format of imaging.py is read.
Everything is decoded once into memory: 4,000 slices at 224x224 are 800 MB as float32.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from config import MAX_PIXELS, MiramError
from imaging import (FORMATS, VOLUME_KINDS, DataError, VolumeView, fit_to_square, list_images, normalize_intensity,
                     read_slice, read_volume, split_ext, stored_dtype, to_grayscale, volume_header)

if TYPE_CHECKING:  # annotations only
    import torch

# torch is imported inside the functions that need it, so that `dataset.py --inspect` and the demo builder
# stay light.
SLICE_KINDS = ("tiff", "png", "dicom")  # one slice per file; VOLUME_KINDS hold many


# ---- layouts: where the slices, their masks and their subjects are ----------------------------------

@dataclass
class Source:
    """One 2-D slice to read: a file, or slice `index` (along `axis`) of a volume."""
    image: str
    mask: str = None
    subject: str = ""
    name: str = ""
    index: int = None
    axis: int = 2


def _stem(path):
    return split_ext(path)[0]


def _pair_by_stem(images, mask_dir, image_dir, kinds):
    """Masks of the same names in mask_dir; warns about masks without image and images without mask."""
    masks = {_stem(p): p for p in list_images(mask_dir, kinds)} if mask_dir and os.path.isdir(mask_dir) else {}
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


def mask_of(image_path, kinds=SLICE_KINDS):
    """The mask the spec layout pairs with one slice, as find_slices pairs them: the file of the same stem in
    MASK/ beside its HR/ folder; None when there is none."""
    mask_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(image_path))), "MASK")
    if not os.path.isdir(mask_dir):
        return None
    return next((p for p in list_images(mask_dir, kinds) if _stem(p) == _stem(image_path)), None)


def _image_dir(root):
    return os.path.join(root, "HR") if os.path.isdir(os.path.join(root, "HR")) else root


def find_volumes(root, subject_pattern, slice_axis):
    """NIfTI volumes in <root>[/HR], masks of the same names in MASK/ or masks/ (optional); every slice along
    slice_axis (empty slices are skipped when read); subject = volume."""
    image_dir = _image_dir(root)
    volumes = list_images(image_dir, VOLUME_KINDS)
    if not volumes:
        return None
    singles = list_images(image_dir, SLICE_KINDS)
    if singles:  # two kinds of subject in one folder: which one the user meant is theirs to say
        raise DataError(f"{image_dir}: holds both volumes ({len(volumes)}, e.g. {os.path.basename(volumes[0])}) and "
                        f"single-slice images ({len(singles)}, e.g. {os.path.basename(singles[0])}); put them "
                        "in separate folders")
    mask_dir = next((d for d in (os.path.join(root, "MASK"), os.path.join(root, "masks")) if os.path.isdir(d)), None)
    sources = []
    for vol, mask in _pair_by_stem(volumes, mask_dir, image_dir, VOLUME_KINDS):
        try:
            shape, affine = volume_header(vol)
        except Exception as e:  # nibabel raises several kinds for a bad header
            warnings.warn(f"skipping {vol}: cannot read its header ({type(e).__name__})", stacklevel=2)
            continue
        if len(shape) != 3:
            raise DataError(f"{vol}: a volume must be 3-D, got shape {shape}")
        sources += [Source(vol, mask, _stem(vol), f"{_stem(vol)}[{i}]", i, slice_axis)
                    for i in range(VolumeView(affine, slice_axis).count(shape))]
    return sources


def find_kaggle_lgg(root, subject_pattern, slice_axis):
    """<root>[/kaggle_3m]/<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif; subject = folder."""
    kaggle = os.path.join(root, "kaggle_3m") if os.path.isdir(os.path.join(root, "kaggle_3m")) else root
    patients = sorted(d for d in os.listdir(kaggle) if os.path.isdir(os.path.join(kaggle, d)) and d not in ("HR", "MASK"))
    if not (patients and any(f.endswith("_mask.tif") for d in patients for f in os.listdir(os.path.join(kaggle, d)))):
        return None
    sources = []
    for d in patients:
        folder = os.path.join(kaggle, d)
        for p in list_images(folder, SLICE_KINDS):
            if _stem(p).endswith("_mask"):
                continue
            mask = os.path.join(folder, _stem(p) + "_mask" + split_ext(p)[1])
            sources.append(Source(p, mask if os.path.isfile(mask) else None, d, os.path.basename(p)))
    if not sources:
        raise DataError(f"Dataset empty: no images in the patient folders of {kaggle}")
    return sources


def find_slices(root, subject_pattern, slice_axis):
    """The spec's <root>/HR/ slices with MASK/ of the same names, or a flat folder of slices; the subject is
    the file name matched by SUBJECT_PATTERN."""
    image_dir = _image_dir(root)
    images = list_images(image_dir, SLICE_KINDS)
    if not images:
        raise DataError(f"Dataset empty: no {'/'.join(ext for k in SLICE_KINDS for ext in FORMATS[k])} images "
                        f"in {image_dir} (check DATASET_PATH; images belong in HR/)")
    pairs = _pair_by_stem(images, os.path.join(root, "MASK"), image_dir, SLICE_KINDS)
    return [Source(p, m, subject_of(p, subject_pattern), os.path.basename(p)) for p, m in pairs]


# Tried in order: the first that recognizes the folder (returns sources, not None) reads it. A new layout
# is one function here.
LAYOUTS = {"nifti": find_volumes, "kaggle_lgg": find_kaggle_lgg, "spec": find_slices}


def discover(root: str, subject_pattern: str = r"^(.+?)(?:_\d+)?$", slice_axis: int = 2):
    """(layout, [Source]) of a data folder."""
    if not os.path.exists(root):
        raise DataError(f"Dataset empty: {root} does not exist (set DATASET_PATH or MIRAM_DATA_PATH)")
    if not os.path.isdir(root):
        raise DataError(f"{root}: is a file; DATASET_PATH must be a folder of images (HR/ and MASK/)")
    for layout, find in LAYOUTS.items():
        sources = find(root, subject_pattern, slice_axis)
        if sources is not None:
            return layout, sources


def find_pairs(root: str):
    """[(image_path, mask_path or None)] of a data folder."""
    return [(s.image, s.mask) for s in discover(root)[1]]


class _VolumeCache:
    """Keeps the last two volumes read (an image and its mask), so the slices of a volume decode each file
    once."""

    def __init__(self, max_pixels=MAX_PIXELS):
        self.volumes, self.max_pixels = {}, max_pixels

    def slice(self, path, index, axis, like=None):
        """Slice `index` of path as VolumeView cuts it; like: the image whose view a mask is cut with (a mask
        is voxel for voxel its image's, whatever affine the tool that wrote it gave it)."""
        if path not in self.volumes:
            if len(self.volumes) >= 2:
                self.volumes.pop(next(iter(self.volumes)))  # the oldest
            vol, affine = read_volume(path, self.max_pixels)
            self.volumes[path] = (vol, VolumeView(affine, axis))
        vol, view = self.volumes[path]
        if like is not None:
            image, view = self.volumes[like]
            if vol.shape != image.shape:
                raise DataError(f"{path}: mask volume is {'x'.join(map(str, vol.shape))} but its image is "
                                f"{'x'.join(map(str, image.shape))}")
        return to_grayscale(view.slice(vol, index), f"{path}[{index}]")


def read_source(src: Source, cache: _VolumeCache = None):
    """-> (image (H, W) float32, mask (H, W) or None); DataError naming the file when it cannot. cache:
    where the slices of one volume are read in turn."""
    cache = cache or _VolumeCache()
    if src.index is None:
        img = read_slice(src.image, cache.max_pixels)
        mask = read_slice(src.mask, cache.max_pixels) if src.mask else None
    else:
        img = cache.slice(src.image, src.index, src.axis)
        mask = cache.slice(src.mask, src.index, src.axis, like=src.image) if src.mask else None
    if mask is not None and mask.shape != img.shape:
        raise DataError(f"{src.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
                        f"{img.shape[0]}x{img.shape[1]}")
    return img, mask


def subject_of(path: str, pattern: str) -> str:
    stem = _stem(path)
    m = re.match(pattern, stem)
    return m.group(1) if m and m.group(1) else stem


def split_by_subject(subjects, val_fraction: float, seed: int, val_subjects=()):
    """Indices (train, val): whole subjects go to one side. At least one subject on each side when possible.
    val_subjects: the validation subjects named (each must be one of subjects) instead of drawn."""
    unique = sorted(set(subjects))
    if val_subjects:
        unknown = sorted(set(val_subjects) - set(unique))
        if unknown:
            raise DataError(f"VAL_SUBJECTS names {unknown[0]!r}, not a subject of this data set "
                            f"({len(unique)} subjects, e.g. {unique[0]!r})")
        if set(val_subjects) >= set(unique):
            raise DataError("VAL_SUBJECTS names every subject of this data set: none would be left to train on")
    else:
        rng = np.random.default_rng(seed)
        order = [unique[i] for i in rng.permutation(len(unique))]
        n_val = min(max(1, round(len(unique) * val_fraction)), len(unique) - 1) if len(unique) > 1 else 0
        val_subjects = order[:n_val]
    val_subjects = set(val_subjects)
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

    def joined(self, other):
        """This set's slices, then other's."""
        import torch
        return SliceSet(*(torch.cat([a, b]) for a, b in ((self.images, other.images), (self.masks, other.masks),
                                                         (self.labels, other.labels), (self.has_mask, other.has_mask))),
                        self.names + other.names, self.subjects + other.subjects)

    def rows_by_subject(self):
        """{subject: the numbers of its slices}, subjects in the order they first appear."""
        rows = {}
        for i, subject in enumerate(self.subjects):
            rows.setdefault(subject, []).append(i)
        return rows

    def labelled(self):
        """The slices with a mask file: only they carry a label."""
        return self.subset(i for i in range(len(self)) if self.has_mask[i])

    def subject_fraction(self, fraction, seed):
        """The slices of a share of the subjects (at least one), drawn by seed: fewer labels, subjects whole."""
        if fraction >= 1:
            return self
        subjects = sorted(set(self.subjects))
        order = np.random.default_rng(seed).permutation(len(subjects))
        chosen = {subjects[i] for i in order[:max(1, round(fraction * len(subjects)))]}
        return self.subset(i for i, s in enumerate(self.subjects) if s in chosen)


def load_slices(root: str, size: int, subject_pattern: str, quiet=False, slice_axis: int = 2,
                max_pixels: int = MAX_PIXELS) -> SliceSet:
    """Decodes every readable slice (and its mask) once; unreadable files are skipped with a warning each."""
    import torch
    layout, sources = discover(root, subject_pattern, slice_axis)
    images, masks, labels, has_mask, names, subjects = [], [], [], [], [], []
    skipped = empty = 0
    cache = _VolumeCache(max_pixels)
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


def load_transfer(cfg, size, quiet=False, trained_on=()):
    """-> (every slice of the TRANSFER_PATH set, its folder) ("builtin": the packaged heads, built on first
    use), or (None, "") where none is configured. A subject a trained_on checkpoint learned from is refused."""
    from config import BUILTIN_TRANSFER_PATH
    if not cfg.TRANSFER_PATH:
        return None, ""
    root = cfg.TRANSFER_PATH
    if root == "builtin":
        root = BUILTIN_TRANSFER_PATH
        if not os.path.isdir(os.path.join(root, "HR")):
            if not quiet:
                print(f"building the transfer set in {root} (real heads from the dipy and nibabel packages)")
            build_transfer_data(root)
    if os.path.realpath(root) == os.path.realpath(resolve_data_path(cfg, quiet=True)):
        if not quiet:
            print(f"note: the transfer set {root} is the data this run learns from: not reported as a transfer set")
        return None, ""
    data = load_slices(root, size, cfg.SUBJECT_PATTERN, True, cfg.SLICE_AXIS, cfg.MAX_PIXELS)
    for path, state in trained_on:
        refuse_trained_subjects(data.subjects, state, path)
    return data, root


def load_split(cfg, quiet=False, trained_on=()):
    """(train, val) SliceSets of the configured data, split by subject with cfg.SPLIT_SEED. trained_on:
    (path, checkpoint state) pairs the caller builds on; a validation subject any of them was trained on is
    refused (another SPLIT_SEED, VAL_FRACTION, SUBJECT_PATTERN or data set would leak it into validation)."""
    root = resolve_data_path(cfg, quiet)
    data = load_slices(root, cfg.IMG_SIZE, cfg.SUBJECT_PATTERN, quiet, cfg.SLICE_AXIS, cfg.MAX_PIXELS)
    try:
        train_idx, val_idx = split_by_subject(data.subjects, cfg.VAL_FRACTION, cfg.SPLIT_SEED, named_subjects(cfg))
    except DataError as e:
        raise DataError(f"{root}: {e}") from None
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
                      "SUBJECT_PATTERN": cfg.SUBJECT_PATTERN,
                      **({"VAL_SUBJECTS": cfg.VAL_SUBJECTS} if cfg.VAL_SUBJECTS else {})}}


def named_subjects(cfg):
    """VAL_SUBJECTS as a list (empty: the split is drawn)."""
    return [s.strip() for s in cfg.VAL_SUBJECTS.split(",") if s.strip()]


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

def augment_params(n: int, generator: torch.Generator, wider: float = 0.0):
    """Random parameters for n images: rotation +-10 deg, scale 0.9-1.1, shift +-5%, left-right flip,
    gamma 0.7-1.4; with wider > 0, that share of the images framed wider (scale 0.45-1.1, shift +-10%: a head
    smaller in the frame and off its centre, as other scanners and fields of view give it; 0.45 measured
    better than 0.7 and than 0.3 on the transfer set, docs/METHODS.md). Drawn for a whole
    global batch, so every process of a distributed run (and a single process with the same global batch)
    gives each image the same augmentation."""
    import torch

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)
    params = {"angle": uniform(-10, 10) * torch.pi / 180, "scale": uniform(0.9, 1.1),
              "flip": torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0),
              "tx": uniform(-0.05, 0.05), "ty": uniform(-0.05, 0.05),
              "gamma": torch.exp(uniform(np.log(0.7), np.log(1.4)))}
    if wider > 0:  # drawn after the rest: wider=0 keeps the draws as they were
        wide = torch.rand(n, generator=generator) < wider
        params["scale"] = torch.where(wide, uniform(0.45, 1.1), params["scale"])
        for shift in ("tx", "ty"):
            params[shift] = torch.where(wide, 2 * params[shift], params[shift])
    return params


def apply_augment(imgs: torch.Tensor, params, intensity=True) -> torch.Tensor:
    """imgs (B, C, H, W) in [0, 1] -> augmented, with params of augment_params(B, ...); intensity=False:
    the geometry alone (for masks)."""
    import torch
    import torch.nn.functional as F
    B = imgs.shape[0]
    cos, sin = torch.cos(params["angle"]) / params["scale"], torch.sin(params["angle"]) / params["scale"]
    flip = params["flip"]
    theta = torch.stack([torch.stack([cos * flip, -sin, params["tx"]], 1),
                         torch.stack([sin * flip, cos, params["ty"]], 1)], 1)
    grid = F.affine_grid(theta.to(imgs), list(imgs.shape), align_corners=False)
    out = F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.clamp(0, 1)
    return out ** params["gamma"].to(imgs).view(B, 1, 1, 1) if intensity else out


def local_images(images, gidx, mine, gen, device, augment, masks=None, wider=0.0, paste=None):
    """This process's images of global batch gidx, augmented. The augmentation is drawn for the whole
    global batch (the same on every process), then applied where the model runs: on a GPU the CPU would
    otherwise bound the step rate. With masks (N, 1, S, S): -> (images, masks as float), each mask moved
    as its image is (its values become the share of tumor under each pixel). wider: see augment_params.
    paste: a LesionPaster, applied before the augmentation (needs masks); then -> (images, masks, pasted)."""
    params = augment_params(len(gidx), gen, wider) if augment else None
    imgs = images[gidx[mine]]
    if masks is not None:
        masks = masks[gidx[mine]].to(imgs.dtype)
    pasted = None
    if paste is not None:
        imgs, masks, pasted = paste(imgs, masks, len(gidx), mine, gen)
    imgs = imgs.to(device, non_blocking=True)
    if masks is not None:
        masks = masks.to(device, non_blocking=True)
    if params is not None:
        params = {k: v[mine].to(device) for k, v in params.items()}
        imgs = apply_augment(imgs, params)
        if masks is not None:
            masks = apply_augment(masks, params, intensity=False)
    if pasted is not None:
        return imgs, masks, pasted.to(device)
    return imgs if masks is None else (imgs, masks)


# ---- lesions moved between slices (CLS_LESION_PASTE) -------------------------------------------------

BRAIN_LEVEL = 0.1  # a pixel of a [0, 1] slice above this is brain (or head), as lesion_site reads a slice


def lesion_layers(images, masks, margin=6, min_pixels=4):
    """Every lesion of the masked slices, relative to the tissue around it: (level (h, w), alpha (h, w)) float32
    crops around each connected lesion, level = the slice over the median of the brain in a `margin`-pixel
    ring around the lesion, alpha = the mask softened by a pixel. Pasted into another slice (LesionPaster), a
    lesion keeps its contrast to the tissue it lands on, whatever that tissue's brightness; lesions without
    brain around them (on the head's edge) and specks under min_pixels are left out.
    images (N, 1, S, S) in [0, 1], masks (N, 1, S, S) bool."""
    from scipy import ndimage
    layers = []
    for img, mask in zip(images[:, 0].numpy(), masks[:, 0].numpy().astype(bool)):
        parts, n = ndimage.label(mask)
        for j, box in enumerate(ndimage.find_objects(parts), start=1):
            region = parts == j
            if region.sum() < min_pixels:
                continue
            ring = ndimage.binary_dilation(region, iterations=margin) & ~ndimage.binary_dilation(region)
            tissue = img[ring & (img > BRAIN_LEVEL)]
            if len(tissue) < ring.sum() / 2:
                continue
            level = float(np.median(tissue))
            y0, x0 = max(box[0].start - 2, 0), max(box[1].start - 2, 0)
            y1, x1 = min(box[0].stop + 2, mask.shape[0]), min(box[1].stop + 2, mask.shape[1])
            alpha = ndimage.gaussian_filter(region.astype(np.float32), 0.7)[y0:y1, x0:x1]
            layers.append(((img[y0:y1, x0:x1] / level).astype(np.float32), (alpha / alpha.max()).astype(np.float32)))
    return layers


class LesionPaster:
    """Lesions of the labelled training slices pasted into labelled training slices (CLS_LESION_PASTE): a share
    of every batch is replaced by a labelled slice with one lesion of lesion_layers placed at random inside
    its brain, turned and flipped at random, its size and its contrast to the tissue around it there each
    scaled by a factor from 1/scale to scale and 1/contrast to contrast (log-uniform); the slice
    is then a tumor slice, its mask its own and the pasted lesion's. A few labelled lesions are seen on
    every labelled anatomy and in many places, and each tumor-free slice is seen with and without a lesion,
    so only the lesion tells the classes apart (pasting into unlabelled slices as well measured worse: they
    appeared only with lesions, so which slice it was foretold the label). Draws come
    from the batch's generator, for the whole global batch (as augment_params), so every process and a
    resumed run draw alike."""

    def __init__(self, share, images, masks, margin=6, scale=1.33, contrast=1.33):
        import torch
        self.share, self.images, self.masks, self.margin = share, images, masks, margin
        self.scale, self.contrast = scale, contrast  # jitter ranges: a factor from 1/x to x, log-uniform
        self.layers = [(torch.from_numpy(v), torch.from_numpy(a)) for v, a in lesion_layers(images, masks, margin)]
        if not self.layers:
            raise MiramError("CLS_LESION_PASTE: the labelled training slices' masks hold no lesion to paste")

    def __call__(self, imgs, masks, n_global, mine, gen):
        """imgs, masks (B, 1, S, S) of this process's share `mine` of a global batch of n_global ->
        (imgs, masks, pasted (B,) bool), the replaced slices pasted."""
        import torch
        import torch.nn.functional as F
        replace = (torch.rand(n_global, generator=gen) < self.share)[mine]
        target = torch.randint(len(self.images), (n_global,), generator=gen)[mine]
        layer = torch.randint(len(self.layers), (n_global,), generator=gen)[mine]
        turn = torch.randint(8, (n_global,), generator=gen)[mine]
        place = torch.rand(n_global, generator=gen)[mine]
        # each lesion a little larger or smaller, fainter or darker: a few labelled lesions stand for their family
        size, strength = (torch.exp(torch.empty(n_global).uniform_(-r, r, generator=gen))[mine]
                          for r in (math.log(self.scale), math.log(self.contrast)))
        imgs, masks = imgs.clone(), masks.clone()
        pasted = torch.zeros(len(imgs), dtype=torch.bool)
        for i in torch.nonzero(replace).flatten().tolist():
            level, alpha = (torch.rot90(t, int(turn[i]) % 4) for t in self.layers[int(layer[i])])
            if turn[i] >= 4:
                level, alpha = level.flip(1), alpha.flip(1)
            shape = [max(2, round(n * float(size[i]))) for n in level.shape]
            level, alpha = (F.interpolate(t[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
                            for t in (level, alpha))
            level = 1 + (level - 1) * float(strength[i])
            if not (alpha > 0.5).any():  # a speck shrunk below a pixel: no lesion to label
                continue
            img = self.images[int(target[i])].to(imgs.dtype).clone()
            spot = self.spot(img, level.shape, float(place[i]))
            if spot is None:  # no brain large enough around: the slice drawn for the batch stays
                continue
            (y, x), tissue = spot
            h, w = level.shape
            window = img[0, y:y + h, x:x + w]
            img[0, y:y + h, x:x + w] = (window * (1 - alpha) + tissue * level * alpha).clamp(0, 1)
            mask = self.masks[int(target[i])].to(masks.dtype).clone()
            mask[0, y:y + h, x:x + w] = torch.maximum(mask[0, y:y + h, x:x + w], (alpha > 0.5).to(masks.dtype))
            imgs[i], masks[i], pasted[i] = img, mask, True
        return imgs, masks, pasted

    def spot(self, img, shape, place):
        """Where a (h, w) lesion goes in img (1, S, S): the top-left corner of a window whose `margin`-pixel
        surround is all brain, the `place` share along the candidates, and the median of the brain around
        it; None when no window fits."""
        import torch.nn.functional as F
        m = self.margin
        h, w = shape[0] + 2 * m, shape[1] + 2 * m
        if h > img.shape[-2] or w > img.shape[-1]:
            return None
        brain = (F.avg_pool2d(img[None], 5, 1, 2) > BRAIN_LEVEL).float()
        inside = F.avg_pool2d(brain, (h, w), stride=1)[0, 0] > 0.999  # (S-h+1, S-w+1): the window is all brain
        ys, xs = inside.nonzero(as_tuple=True)
        if len(ys) == 0:
            return None
        k = min(int(place * len(ys)), len(ys) - 1)
        y, x = int(ys[k]), int(xs[k])
        return (y + m, x + m), float(img[0, y:y + h, x:x + w].median())


def t2_like(x):
    """Inverts the brain's contrast, background kept: T1 white matter bright and fluid dark become T2's dark
    white matter and bright fluid (grey matter stays between them)."""
    import torch
    return torch.where(torch.as_tensor(x) > 0.05, 0.15 + 0.85 * (1 - torch.as_tensor(x)), torch.as_tensor(x))


# What anatomy_transform draws; part of the variant cache's key, so a changed recipe is never read back stale.
ANATOMY_RECIPE = 3


def anatomy_transform(size):
    """One draw of another plausible brain from a size x size slice (MONAI transforms, dictionaries of image and
    mask): smooth elastic deformation (the mask moves alike), T2-like contrast, bias field, gamma, lower
    resolution, blur or sharpening (a single subject's scan is sharper than the averaged template), a cropped
    field of view (the image and mask kept inside one random box, 20-80% of the side, zero outside, as a slab
    acquisition or a cropped export gives) and Rician noise. A per-tissue contrast change (MONAI's
    RandHistogramShiftd) was measured and left out: no gain on the transfer set, lower validation SSIM."""
    from monai.transforms import (Compose, Rand2DElasticd, RandAdjustContrastd, RandBiasFieldd, RandCoarseDropoutd,
                                  RandGaussianSharpend, RandGaussianSmoothd, RandLambdad, RandRicianNoised,
                                  RandSimulateLowResolutiond)
    return Compose([
        Rand2DElasticd(keys=("image", "mask"), spacing=(32, 32), magnitude_range=(1, 2), prob=0.8,
                       mode=("bilinear", "bilinear"), padding_mode="zeros", allow_missing_keys=True),
        RandLambdad(keys="image", func=t2_like, prob=0.3),
        RandBiasFieldd(keys="image", coeff_range=(0.0, 0.3), prob=0.5),
        RandAdjustContrastd(keys="image", gamma=(0.6, 1.6), prob=0.5),
        RandSimulateLowResolutiond(keys="image", zoom_range=(0.4, 0.9), prob=0.3, downsample_mode="area",
                                   upsample_mode="bilinear"),  # "nearest" shifted the image off its mask
        RandGaussianSmoothd(keys="image", sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), prob=0.2),
        RandGaussianSharpend(keys="image", sigma1_x=(0.5, 1.0), sigma1_y=(0.5, 1.0), sigma2_x=0.5, sigma2_y=0.5,
                             alpha=(1.0, 4.0), prob=0.3),  # MONAI's default alpha (10-30) rings at edges
        # dropout_holes=False keeps the box and fills the rest: a field of view, not a hole
        RandCoarseDropoutd(keys=("image", "mask"), holes=1, spatial_size=max(1, int(size * 0.2)),
                           max_spatial_size=max(1, int(size * 0.8)), dropout_holes=False, fill_value=0.0,
                           prob=0.3, allow_missing_keys=True),
        RandRicianNoised(keys="image", std=0.03, prob=0.3, sample_std=True),
    ])


def anatomy_variants(images, copies: int, seed: int, masks=None, cache=None):
    """images (N, 1, S, S) followed by `copies` variants of each (anatomy_transform, drawn from seed): variant
    k of slice i is row k * N + i; images stay in [0, 1]. -> (images, masks): with masks (N, 1, S, S) float,
    each deformed with its image (the lesion's share under each pixel); without, None and about half the
    time (the draws, and so the images, are the same). cache: a file that keeps the result (without masks),
    read back when it was drawn from the same images, copies, seed and MONAI version: pre-training and the
    inpainting fine-tune use the same variants, which take seconds to draw."""
    import torch
    if copies == 0:
        return images, masks
    if cache is not None and masks is None:
        return _cached_variants(images, copies, seed, cache)
    transform = anatomy_transform(images.shape[-1])
    transform.set_random_state(seed=seed)
    out_images, out_masks = [images], [masks]
    for _ in range(copies):
        drawn = ([transform({"image": img}) for img in images] if masks is None
                 else [transform({"image": img, "mask": m}) for img, m in zip(images, masks)])
        out_images.append(torch.stack([torch.as_tensor(d["image"]).float().clamp(0, 1) for d in drawn]))
        if masks is not None:
            out_masks.append(torch.stack([torch.as_tensor(d["mask"]).float().clamp(0, 1) for d in drawn]))
    # MONAI returns MetaTensors: made plain
    images = torch.cat(out_images).as_subclass(torch.Tensor)
    return images, None if masks is None else torch.cat(out_masks).as_subclass(torch.Tensor)


def _cached_variants(images, copies, seed, path):
    import hashlib
    from importlib.metadata import version

    import torch

    from checkpoint import atomic_torch_save
    # MONAI's version from its metadata: importing MONAI takes seconds, which a cache hit need not pay
    key = (hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()
           + f"/{copies}/{seed}/{version('monai')}/{ANATOMY_RECIPE}")
    if os.path.isfile(path):
        try:
            saved = torch.load(path, weights_only=True)
            if saved.get("key") == key:
                return saved["images"], None
        except Exception:  # unreadable (a foreign or damaged file): drawn again and replaced
            pass
    out, _ = anatomy_variants(images, copies, seed)
    try:
        atomic_torch_save({"key": key, "images": out}, path)
    except MiramError:  # a cache only: the run goes on without it
        pass
    return out, None


def variant_index(gidx, n, copies, gen):
    """Global batch indices into anatomy_variants' images: each slice as itself or one of its variants, drawn
    for the whole global batch (the same on every process); without variants, gidx unchanged."""
    import torch
    if copies == 0:
        return gidx
    return gidx + n * torch.randint(0, copies + 1, (len(gidx),), generator=gen)


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
    return packaged_file("nilearn", os.path.join("datasets", "data", TEMPLATE), "the demo data")


def lesion_site(img, rng, margin):
    """The brain of a [0, 255] slice (bool), a centre drawn at least `margin` pixels inside it (anywhere in
    it when it is thinner), and the pixel grid: (brain, cy, cx, yy, xx)."""
    from scipy import ndimage
    brain = ndimage.binary_fill_holes(ndimage.gaussian_filter(img, 2) > 25)
    inner = ndimage.binary_erosion(brain, iterations=margin)
    ys, xs = np.nonzero(inner if inner.any() else brain)
    k = rng.integers(len(ys))
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    return brain, ys[k], xs[k], yy, xx


def paint_tumor(img: np.ndarray, rng: np.random.Generator):
    """Paints an irregular lesion (core + surrounding edema) inside the brain of a [0, 255] slice.

    Returns (image, mask) with mask 2 = core, 1 = edema, 0 = background. Size, shape, position and contrast
    vary with rng; the lesion never leaves the brain.
    """
    from scipy import ndimage
    brain, cy, cx, yy, xx = lesion_site(img, rng, margin=12)
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


def paint_subtle_lesion(img: np.ndarray, rng: np.random.Generator, radius=(3, 7), darkness=(0.70, 0.85)):
    """A second lesion family, unlike paint_tumor's: small (radius 3-7 px), dark with low contrast (70-85%
    of the tissue around it) and a faint bright rim (4-10% above it), in the brain's interior. The kind a
    few-label classifier finds hard: it looks like a sulcus or a vessel unless the anatomy is known.
    radius and darkness (the core's share of the tissue around it) are ranges drawn from: bench/lesion_limit.py
    measures which sizes and contrasts the classifier learns.

    Returns (image, mask) with mask 1 on the lesion and its rim."""
    from scipy import ndimage
    brain, cy, cx, yy, xx = lesion_site(img, rng, margin=15)
    r = np.hypot((yy - cy) / rng.uniform(0.7, 1.0), (xx - cx) / rng.uniform(0.7, 1.0))  # a little oval
    r0 = rng.uniform(*radius)
    local = float(np.median(img[(r < 3 * r0) & brain]))
    core = ndimage.gaussian_filter((r < r0).astype(float), 0.8)
    rim = ndimage.gaussian_filter(((r >= r0) & (r < r0 + 2)).astype(float), 0.8)
    out = img * (1 - core) + local * rng.uniform(*darkness) * core
    out = out + local * rng.uniform(0.04, 0.10) * rim * (1 - core)
    mask = ((r < r0 + 2) & brain).astype(np.uint8)
    return np.clip(out, 0, 255), mask


LESION_PAINTERS = {"tumor": paint_tumor, "subtle": paint_subtle_lesion}


def build_demo_data(dest: str, seed: int = 0, step: int = 1, slab: int = 10, gap: int = 5, lesions: str = "tumor",
                    painter_args: dict = None):
    """Writes axial, coronal and sagittal slices of the MNI152 T1 template to dest/HR and dest/MASK, with
    lesions of one family of LESION_PAINTERS ("tumor": the demo's; "subtle": the few-label test's), painted
    with painter_args (keyword settings of the painter, e.g. paint_subtle_lesion's radius and darkness).

    Slices are taken every `step` mm and grouped into slabs of `slab` slices with `gap` skipped positions
    between slabs; a slab is the "subject" of its slices (the file name's prefix), so a subject-grouped split
    holds out whole slabs. Every other slice of a slab gets a synthetic tumor: its neighbours, 1 mm away,
    show nearly the same anatomy without one, so a classifier has to find the lesion, not the anatomy.
    """
    import nibabel as nib
    template = nib.load(template_path())
    vol = np.asarray(template.dataobj, dtype=np.float32)  # 1 mm, [0, 255]
    rng = np.random.default_rng(seed)

    def slices():
        views = {"axial": 2, "coronal": 1, "sagittal": 0}
        for name, axis in views.items():
            view = VolumeView(template.affine, axis)  # cut as every phase cuts a user's volume
            positions = [i for i in range(0, view.count(vol.shape), step) if (view.slice(vol, i) > 25).mean() > 0.15]
            for n, pos in enumerate(positions):
                slab_id, within = divmod(n, slab + gap)
                if within >= slab:
                    continue
                sl = view.slice(vol, pos)
                mask = np.zeros(sl.shape, np.uint8)
                if (within + slab_id) % 2:
                    sl, mask = LESION_PAINTERS[lesions](sl, rng, **(painter_args or {}))
                yield f"mni_{name}_slab{slab_id:02d}_{pos:03d}.tif", sl, mask
    return write_slice_set(dest, slices())


def write_slice_set(dest, items):
    """Writes (name, [0, 255] slice, mask) items as dest/HR/name (uint8) and dest/MASK/name, into a
    temporary folder renamed at the end: a half-built set is never mistaken for a finished one. -> count."""
    import shutil

    import tifffile
    tmp = dest.rstrip("/") + ".partial"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(os.path.join(tmp, "HR"))
    os.makedirs(os.path.join(tmp, "MASK"))
    count = 0
    for name, sl, mask in items:
        tifffile.imwrite(os.path.join(tmp, "HR", name), np.round(np.clip(sl, 0, 255)).astype(np.uint8))
        tifffile.imwrite(os.path.join(tmp, "MASK", name), mask.astype(np.uint8))
        count += 1
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    os.replace(tmp, dest)
    return count


# Real heads the demo never trains on, from files inside installed wheels (nothing is downloaded):
# (subject, package, path inside it, contrast, how to read it). Voxel sizes come from the NIfTI headers; the
# dipy T1 slice is stored as a bare array, its 1 mm spacing is an assumption.
TRANSFER_SOURCES = (
    ("dipy_t1", "dipy", "data/files/t1_coronal_slice.npy", "T1", "npy"),
    ("nibabel_t1", "nibabel", "tests/data/anatomical.nii", "T1", "nifti"),
    ("dipy_b0_2mm", "dipy", "data/files/S0_10slices.nii.gz", "T2", "nifti"),
    ("dipy_b0_4mm", "dipy", "data/files/aniso_vox.nii.gz", "T2", "nifti"),
)


def packaged_file(package, relative, needed_by="the transfer set"):
    """The path of a data file shipped inside an installed package (read from disk, never downloaded)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataError(f"{needed_by} needs the {package} package (pip install -r requirements.txt)")
    path = os.path.join(os.path.dirname(spec.origin), relative)
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing from the installed {package}")
    return path


def transfer_slices(package, relative, kind):
    """-> (slices (n, rows, cols) float32 in [0, 255] (scaled by the 99.5th percentile), their pixel size in
    mm). NIfTI volumes are cut axially by VolumeView, as the demo's slices are (anterior up); the dipy slice
    is a bare array already upright."""
    import nibabel as nib
    path = packaged_file(package, relative)
    if kind == "npy":
        slices, zooms = np.load(path).astype(np.float32)[None], (1.0, 1.0)
    else:
        img = nib.squeeze_image(nib.load(path))
        view = VolumeView(img.affine, 2)
        slices = np.ascontiguousarray(view.slices(np.asarray(img.dataobj, dtype=np.float32)))
        zooms = tuple(float(z) for z in view.in_plane(img.header.get_zooms()[:3]))
    top = np.percentile(slices[slices > 0], 99.5) if (slices > 0).any() else 1.0
    return np.clip(slices / top, 0, 1) * 255, zooms


def pad_to(img, shape):
    """img centred in zeros of at least `shape`: a cropped field of view placed in a whole head's."""
    rows, cols = max(shape[0], img.shape[0]), max(shape[1], img.shape[1])
    out = np.zeros((rows, cols), img.dtype)
    top, left = (rows - img.shape[0]) // 2, (cols - img.shape[1]) // 2
    out[top:top + img.shape[0], left:left + img.shape[1]] = img
    return out


def build_transfer_data(dest: str, seed: int = 0, per_subject: int = None, lesions: str = "subtle"):
    """Writes the slices of TRANSFER_SOURCES, resampled to 1 mm pixels and placed in at least the template's
    field of view (233 x 197 mm) as the demo's are, to dest/HR and dest/MASK, a lesion of the given family on
    every other slice. File names: <subject>_<contrast>_<slice>, so SUBJECT_PATTERN keeps each head whole.
    per_subject: at most this many slices of each (tests)."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)

    def slices():
        for subject, package, relative, contrast, kind in TRANSFER_SOURCES:
            stack, zooms = transfer_slices(package, relative, kind)
            keep = [z for z in range(len(stack)) if (stack[z] > 25).mean() > 0.15]
            for n, z in enumerate(keep[:per_subject]):
                sl = pad_to(ndimage.zoom(stack[z], zooms, order=1), (233, 197))
                mask = np.zeros(sl.shape, np.uint8)
                if n % 2:
                    sl, mask = LESION_PAINTERS[lesions](sl, rng)
                yield f"{subject}_{contrast}_{z:03d}.tif", np.clip(sl, 0, 255), mask
    return write_slice_set(dest, slices())


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
    parser.add_argument("--build-transfer", metavar="DIR",
                        help="write the transfer set (real heads from installed packages, subtle lesions) into DIR")
    parser.add_argument("--lesions", choices=sorted(LESION_PAINTERS), default=None,
                        help="the lesion family (subtle: small, dark, low-contrast, faint rim); default: tumor "
                             "for --build-demo, subtle for --build-transfer")
    parser.add_argument("--slice-axis", type=int, default=2, help="NIfTI: the axis to slice along")
    args = parser.parse_args(argv)
    if args.build_demo or args.build_transfer:
        dest = args.build_demo or args.build_transfer
        n = (build_demo_data(dest, lesions=args.lesions or "tumor") if args.build_demo
             else build_transfer_data(dest, lesions=args.lesions or "subtle"))
        print(f"wrote {n} slices to {dest}/HR and their masks to {dest}/MASK")
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

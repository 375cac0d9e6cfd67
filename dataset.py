"""Reading data: layouts of slices on disk, and the slices loaded for training, split as splits.py says.

Layouts (LAYOUTS): <DATASET_PATH>/HR/ images with MASK/ of the same names (the spec's), or a flat folder of
images; NIfTI volumes; the Kaggle LGG folders; class folders (<root>/<class>/ images, as most public 2-D tumor
sets are: the folder is the label). Every image format of imaging.py is read. Everything is decoded
once into memory (4,000 slices at 224x224 are 800 MB as float32). torch is imported by the functions that need
it, so that `dataset.py --inspect` stays light.
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

from config import MAX_PIXELS
from imaging import (FORMATS, VOLUME_KINDS, DataError, fit_to_square, list_images, list_names,
                     normalize_intensity, read_slice, read_volume, split_ext, stored_dtype, to_grayscale, volume_header)
from splits import (duplicate_groups, merge_duplicates, named_subjects, refuse_trained_subjects, split_by_subject,
                    thumbnail)
from volumes import VolumeView

if TYPE_CHECKING:  # annotations only
    import torch

SLICE_KINDS = ("tiff", "png", "jpeg", "dicom")  # one slice per file; VOLUME_KINDS hold many


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
    label: str = None  # the class folder's name, in the class-folder layout


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
    """<root>[/kaggle_3m]/<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif; subject = folder. A subfolder
    that cannot be read (a disk's lost+found) is no patient: skipped with a warning."""
    kaggle = os.path.join(root, "kaggle_3m") if os.path.isdir(os.path.join(root, "kaggle_3m")) else root
    patients, names = [], {}
    for d in sorted(list_names(kaggle)):
        if d in ("HR", "MASK") or not os.path.isdir(os.path.join(kaggle, d)):
            continue
        try:
            names[d] = os.listdir(os.path.join(kaggle, d))
            patients.append(d)
        except OSError as e:
            warnings.warn(f"skipping {os.path.join(kaggle, d)}: cannot list it ({e.strerror})", stacklevel=2)
    if not (patients and any(f.endswith("_mask.tif") for d in patients for f in names[d])):
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
        return None
    pairs = _pair_by_stem(images, os.path.join(root, "MASK"), image_dir, SLICE_KINDS)
    return [Source(p, m, subject_of(p, subject_pattern), os.path.basename(p)) for p, m in pairs]


# A class folder named like these holds the images without a tumor: class 0 of a binary set.
NEGATIVE_CLASS = re.compile(r"^(no|none|normal|healthy|negative|control|no[_ -]?tumou?r|notumou?r)$", re.IGNORECASE)
NOT_CLASSES = {"hr", "mask", "masks"}


def class_order(names):
    """Class folder names in label order: the tumor-free class first (NEGATIVE_CLASS), the others by name."""
    return sorted(names, key=lambda n: (not NEGATIVE_CLASS.match(n), n))


def find_classes(root, subject_pattern, slice_axis):
    """<root>/<class>/ single-slice images, two or more class folders and no images beside them; the label is
    the folder, the subject the file name matched by SUBJECT_PATTERN. A folder holding masks (*_mask files, or
    named MASK) is another layout's, not a class; an unreadable subfolder is skipped with a warning."""
    if list_images(root, SLICE_KINDS + VOLUME_KINDS):
        return None
    classes = {}
    for d in sorted(list_names(root)):
        folder = os.path.join(root, d)
        if d.startswith(".") or d.lower() in NOT_CLASSES or not os.path.isdir(folder):
            continue
        try:
            images = list_images(folder, SLICE_KINDS)
        except DataError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        if any(_stem(p).lower().endswith("_mask") for p in images):
            return None
        if images:
            classes[d] = images
    if len(classes) < 2:
        return None
    return [Source(p, None, subject_of(p, subject_pattern), f"{name}/{os.path.basename(p)}", label=name)
            for name in class_order(classes) for p in classes[name]]


# Every layout is tried; a folder is read in the one that recognizes it, and a folder that more than one
# recognizes is refused until LAYOUT names one (a stray file must not decide what is trained on). A new
# layout is one function here.
LAYOUTS = {"nifti": find_volumes, "kaggle_lgg": find_kaggle_lgg, "spec": find_slices, "classes": find_classes}


def discover(root: str, subject_pattern: str = r"^(.+?)(?:_\d+)?$", slice_axis: int = 2, layout: str = "auto"):
    """(layout, [Source]) of a data folder, in the layout named or the one layout that recognizes it."""
    if not os.path.exists(root):
        raise DataError(f"Dataset empty: {root} does not exist (check DATASET_PATH or MIRAM_DATA_PATH)")
    if not os.path.isdir(root):
        raise DataError(f"{root}: is a file, not a folder of images (HR/ and MASK/)")
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"LAYOUT {layout!r}: unknown (known: auto, {', '.join(LAYOUTS)})")
    found = {}
    for name, find in LAYOUTS.items():
        if layout in ("auto", name):
            sources = find(root, subject_pattern, slice_axis)
            if sources:
                found[name] = sources
    if len(found) > 1:
        raise DataError(f"{root}: holds more than one layout (" + ", ".join(
            f"{name}: {len(sources)} slices" for name, sources in found.items())
            + "); name the one to read with LAYOUT (--layout)")
    if not found:
        kinds = "/".join(ext for k in SLICE_KINDS + VOLUME_KINDS for ext in FORMATS[k])
        raise DataError(f"Dataset empty: no {kinds} images in {_image_dir(root)}"
                        + (f" in the {layout} layout" if layout != "auto" else "")
                        + " (check DATASET_PATH; images belong in HR/)")
    return next(iter(found.items()))


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


# ---- the in-memory slice set -------------------------------------------------------------------------

@dataclass
class SliceSet:
    images: torch.Tensor   # (N, 1, S, S) float32 in [0, 1]
    masks: torch.Tensor    # (N, 1, S, S) bool, tumor pixels (all False where no mask file)
    labels: torch.Tensor   # (N,) float32, 1 = the mask has a non-zero pixel
    has_mask: torch.Tensor  # (N,) bool
    names: list
    subjects: list
    has_label: torch.Tensor = None  # (N,) bool: a mask file or a class folder says what the slice is
    classes: tuple = ()  # class-folder names in label order (labels index them); () where masks give the labels

    def __post_init__(self):
        if self.has_label is None:
            self.has_label = self.has_mask.clone()

    def __len__(self):
        return len(self.names)

    def subset(self, idx):
        import torch
        idx = list(idx)
        t = torch.as_tensor(idx, dtype=torch.long)
        return SliceSet(self.images[t], self.masks[t], self.labels[t], self.has_mask[t],
                        [self.names[i] for i in idx], [self.subjects[i] for i in idx], self.has_label[t], self.classes)

    def joined(self, other):
        """This set's slices, then other's."""
        import torch
        if self.classes != other.classes:
            raise DataError(f"cannot join sets of different classes ({self.classes} and {other.classes})")
        return SliceSet(*(torch.cat([a, b]) for a, b in ((self.images, other.images), (self.masks, other.masks),
                                                         (self.labels, other.labels), (self.has_mask, other.has_mask))),
                        self.names + other.names, self.subjects + other.subjects,
                        torch.cat([self.has_label, other.has_label]), self.classes)

    def rows_by_subject(self):
        """{subject: the numbers of its slices}, subjects in the order they first appear."""
        rows = {}
        for i, subject in enumerate(self.subjects):
            rows.setdefault(subject, []).append(i)
        return rows

    def labelled(self):
        """The slices with a mask file or a class folder: only they carry a label."""
        return self.subset(i for i in range(len(self)) if self.has_label[i])

    def subject_fraction(self, fraction, seed):
        """The slices of a share of the subjects (at least one), drawn by seed: fewer labels, subjects whole."""
        if fraction >= 1:
            return self
        subjects = sorted(set(self.subjects))
        order = np.random.default_rng(seed).permutation(len(subjects))
        chosen = {subjects[i] for i in order[:max(1, round(fraction * len(subjects)))]}
        return self.subset(i for i, s in enumerate(self.subjects) if s in chosen)


def load_slices(root: str, size: int, subject_pattern: str, quiet=False, slice_axis: int = 2,
                max_pixels: int = MAX_PIXELS, layout: str = "auto", duplicates: float = 0.0) -> SliceSet:
    """Decodes every readable slice (and its mask) once; unreadable files are skipped with a warning each.
    duplicates: near-identical images (thumbnails correlating at or above it) become one subject (splits.py)
    where the files name no subjects (class folders, or every file a subject of its own); 0: never."""
    import torch
    layout, sources = discover(root, subject_pattern, slice_axis, layout)
    classes = class_order({src.label for src in sources if src.label is not None})
    images, masks, labels, has_mask, has_label, names, subjects, thumbnails = [], [], [], [], [], [], [], []
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
        if duplicates > 0:
            thumbnails.append(thumbnail(img))
        if mask is not None:
            masks.append(fit_to_square((mask != 0).astype(np.float32), size, order=0) > 0.5)
            labels.append(float((mask != 0).any()))
        else:
            masks.append(np.zeros((size, size), dtype=bool))
            labels.append(float(classes.index(src.label)) if src.label is not None else 0.0)
        has_mask.append(mask is not None)
        has_label.append(mask is not None or src.label is not None)
        names.append(src.name)
        subjects.append(src.subject)
    if not images:
        raise DataError(f"Dataset empty: none of the {len(sources)} slices in {root} ({layout} layout) could be read")
    if skipped and not quiet:
        print(f"warning: skipped {skipped} of {len(sources)} files that could not be read (see warnings above)")
    if duplicates > 0 and len(images) > 1 and (layout == "classes" or len(set(subjects)) == len(subjects)):
        subjects, copies, groups = merge_duplicates(subjects, duplicate_groups(np.stack(thumbnails), duplicates))
        if copies and not quiet:
            print(f"near-identical images: {copies} of {len(images)} in {groups} groups (thumbnails correlating at "
                  f">= {duplicates:g}, flips included); each group is kept on one side of the split")
    return SliceSet(torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(masks))[:, None],
                    torch.tensor(labels), torch.tensor(has_mask), names, subjects, torch.tensor(has_label),
                    tuple(classes))


def resolve_data_path(cfg, quiet=False) -> str:
    """The configured DATASET_PATH, or the embedded demo set (built on first use)."""
    if cfg.DATASET_PATH:
        return cfg.DATASET_PATH
    if not os.path.isdir(os.path.join(cfg.DEMO_DATA_PATH, "HR")):
        if not quiet:
            print(f"no DATASET_PATH configured: building the demo set in {cfg.DEMO_DATA_PATH} "
                  "(slices of nilearn's MNI152 T1 template, half with synthetic tumors)")
        from makedata import build_demo_data
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
            from makedata import build_transfer_data
            build_transfer_data(root)
    if os.path.realpath(root) == os.path.realpath(resolve_data_path(cfg, quiet=True)):
        if not quiet:
            print(f"note: the transfer set {root} is the data this run learns from: not reported as a transfer set")
        return None, ""
    data = load_slices(root, size, cfg.SUBJECT_PATTERN, True, cfg.SLICE_AXIS, cfg.MAX_PIXELS,  # its own layout
                       duplicates=cfg.DUPLICATE_CORRELATION)
    for path, state in trained_on:
        refuse_trained_subjects(data.subjects, state, path)
    return data, root


def load_split(cfg, quiet=False, trained_on=()):
    """(train, val) SliceSets of the configured data, split by subject with cfg.SPLIT_SEED. trained_on:
    (path, checkpoint state) pairs the caller builds on; a validation subject any of them was trained on is
    refused (another SPLIT_SEED, VAL_FRACTION, SUBJECT_PATTERN or data set would leak it into validation)."""
    if cfg.TRANSFER_PATH not in ("", "builtin") and not os.path.isdir(cfg.TRANSFER_PATH):
        # checked with the data, before any training: a run must not fail on it at its end
        raise DataError(f"TRANSFER_PATH {cfg.TRANSFER_PATH}: no such folder (a folder of images, 'builtin', or "
                        "empty for none)")
    root = resolve_data_path(cfg, quiet)
    data = load_slices(root, cfg.IMG_SIZE, cfg.SUBJECT_PATTERN, quiet, cfg.SLICE_AXIS, cfg.MAX_PIXELS, cfg.LAYOUT,
                       cfg.DUPLICATE_CORRELATION)
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


def inspect(root, subject_pattern=r"^(.+?)(?:_\d+)?$", slice_axis=2, layout="auto"):
    """What a folder holds, as load_slices would see it: a dict, and a report printed by main()."""
    from collections import Counter
    layout, sources = discover(root, subject_pattern, slice_axis, layout)
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
    parser = argparse.ArgumentParser(description="What a data folder holds, as training would read it "
                                     "(the demo and transfer sets are built by makedata.py).")
    parser.add_argument("--inspect", metavar="PATH", required=True, help="report layout, slices, subjects, tumor "
                        "share, sizes, dtypes and the files training would refuse, of a data folder")
    parser.add_argument("--slice-axis", type=int, default=2, help="NIfTI: the axis to slice along")
    parser.add_argument("--layout", default=None, help="read the folder in this layout "
                        f"({', '.join(LAYOUTS)}; default LAYOUT, auto)")
    args = parser.parse_args(argv)
    from config import load_config
    cfg = load_config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = inspect(args.inspect, cfg.SUBJECT_PATTERN, args.slice_axis, args.layout or cfg.LAYOUT)
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


if __name__ == "__main__":
    from records import run_cli
    run_cli(main)

"""Reading data: the slices a layout finds (layouts.py), decoded into memory, split as splits.py says, and
`python dataset.py --inspect PATH`, what a folder holds as training would read it.

Every image format of imaging.py is read. Everything is decoded once into memory (4,000 slices at 224x224 are
800 MB as float32). torch is imported by the functions that need it, so that `--inspect` stays light.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from config import MAX_PIXELS
from imaging import DataError, fit_to_square, normalize_intensity, read_slice, read_volume, stored_dtype, to_grayscale
from layouts import LAYOUTS, Source, class_order, discover
from splits import (duplicate_groups, merge_duplicates, named_subjects, refuse_trained_subjects, split_by_subject,
                    thumbnail)
from volumes import VolumeView

if TYPE_CHECKING:  # annotations only
    import torch

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


def native_slices(root, names, cfg):
    """The named slices of root at their own size and intensities, as its layout reads them: a list of (image
    (H, W) float64, mask (H, W) bool, all False where there is none), in the order of names."""
    _, sources = discover(root, cfg.SUBJECT_PATTERN, cfg.SLICE_AXIS, cfg.LAYOUT)
    by_name, cache, out = {src.name: src for src in sources}, _VolumeCache(cfg.MAX_PIXELS), []
    for n in names:
        img, mask = read_source(by_name[n], cache)
        out.append((np.asarray(img, np.float64), np.zeros(img.shape, bool) if mask is None else mask != 0))
    return out


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


def subjects_unnamed(layout, subjects):
    """Whether file names give no subjects (class folders, or every file a subject of its own): only there are
    near-identical images grouped into one subject."""
    return layout == "classes" or len(set(subjects)) == len(subjects)


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
    if duplicates > 0 and len(images) > 1 and subjects_unnamed(layout, subjects):
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
    if cfg.TRAIN_EXCLUDE:
        left_out = excluded_names(cfg.TRAIN_EXCLUDE, data.names)
        train_idx = [i for i in train_idx if data.names[i] not in left_out]
        if not quiet:
            print(f"left out of training: {len(left_out)} images named in {cfg.TRAIN_EXCLUDE}")
    return data.subset(train_idx), data.subset(val_idx) if val_idx else data.subset(train_idx)


def excluded_names(path, names):
    """The image names a TRAIN_EXCLUDE file lists (blank lines and # comments ignored), each one the data holds."""
    try:
        with open(path) as f:
            listed = {line.split("#")[0].strip() for line in f} - {""}
    except OSError as e:
        raise DataError(f"TRAIN_EXCLUDE {path}: cannot read ({e.strerror or e})") from None
    unknown = sorted(listed - set(names))
    if unknown:
        raise DataError(f"TRAIN_EXCLUDE {path}: names {len(unknown)} image(s) the data does not hold, e.g. {unknown[0]!r}")
    return listed


def inspect(root, subject_pattern=r"^(.+?)(?:_\d+)?$", slice_axis=2, layout="auto", duplicates=0.98):
    """What a folder holds, as load_slices would see it: a dict, and a report printed by main()."""
    layout, sources = discover(root, subject_pattern, slice_axis, layout)
    cache = _VolumeCache()
    sizes, dtypes, unreadable = Counter(), Counter(), []
    labelled = tumor = empty = 0
    subjects, names, thumbnails, classes = [], [], [], Counter()
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
        subjects.append(src.subject)
        names.append(src.name)
        thumbnails.append(thumbnail(img))
        if src.label is not None:
            classes[src.label] += 1
        if mask is not None:
            labelled += 1
            tumor += bool((mask != 0).any())
    dtypes = Counter({k: v for k, v in dtypes.items() if v})
    grouped = {}
    if duplicates > 0 and len(names) > 1:  # as load_slices groups them (every layout is counted here)
        groups = duplicate_groups(np.stack(thumbnails), duplicates)
        merged, copies, n_groups = merge_duplicates(subjects, groups)
        largest = np.bincount(groups).max()
        grouped = {"correlation": duplicates, "images_with_a_copy": copies, "groups": n_groups,
                   "largest_group": int(largest), "subjects_after_grouping": len(set(merged)),
                   "applied": subjects_unnamed(layout, subjects)}
    return {"layout": layout, "slices": len(sources) - len(unreadable) - empty, "empty_slices_skipped": empty,
            "subjects": len(set(subjects)), "classes": dict(classes), "duplicates": grouped,
            "labelled": labelled, "with_tumor": tumor,
            "tumor_share": tumor / labelled if labelled else None, "sizes": dict(sizes.most_common()),
            "dtypes": dict(dtypes), "unreadable": unreadable}


def report_lines(r):
    """(heading, text) of inspect's report."""
    lines = [("slices", f"{r['slices']}" + (f" ({r['empty_slices_skipped']} empty slices skipped)"
                                            if r["empty_slices_skipped"] else "")), ("subjects", r["subjects"])]
    if r["classes"]:
        lines.append(("classes", ", ".join(f"{k} x{v}" for k, v in r["classes"].items())))
    d = r["duplicates"]
    if d and d["groups"]:
        lines.append(("copies", f"{d['images_with_a_copy']} images in {d['groups']} groups of near-identical images "
                      f"(largest {d['largest_group']}; thumbnails correlating at >= {d['correlation']:g}, flips "
                      f"included): {d['subjects_after_grouping']} independent subjects"
                      + ("" if d["applied"] else "; not grouped in training: the file names give subjects")))
    share = f"{r['tumor_share']:.1%}" if r["tumor_share"] is not None else "n/a (no masks)"
    lines += [("labelled", f"{r['labelled']} (with a mask), {r['with_tumor']} with tumor: tumor share {share}"),
              ("sizes", ", ".join(f"{k} x{v}" for k, v in r["sizes"].items())),
              ("dtypes", ", ".join(f"{k} x{v}" for k, v in r["dtypes"].items())),
              ("unreadable", f"{len(r['unreadable'])}" + "".join(f"\n    {u}" for u in r["unreadable"]))]
    return lines


def least_alike(root, checkpoint, cfg, layout="auto", n=20, maskings=4, batch=32):
    """The n images the pre-trained MAE reconstructs worst: its squared error on the hidden patches inside the
    head (pixels above 1% of the range), averaged over `maskings` seeded masks, over the median image's: candidates
    to look at, not a filter. -> [{"name", "error", "error_over_median"}]."""
    import torch

    from checkpoint import build_from_checkpoint
    from models import mask_noise, pixel_mask
    model, _ = build_from_checkpoint(checkpoint, "mae")
    model.eval()
    data = load_slices(root, model.cfg.img_size, cfg.SUBJECT_PATTERN, True, cfg.SLICE_AXIS, cfg.MAX_PIXELS, layout)
    p = model.cfg.patch_size
    errors = np.zeros(len(data))
    with torch.no_grad():
        for m in range(maskings):
            noise = mask_noise(len(data), model.encoder.num_patches, cfg.EVAL_SEED + m)
            for s in range(0, len(data), batch):
                x = data.images[s:s + batch]
                fine, _, mask = model.reconstruct(x, noise[s:s + batch])
                weight = pixel_mask(mask, p, model.cfg.img_size) * (x > 0.01)
                sq = ((fine - x) ** 2 * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1)
                errors[s:s + batch] += sq.numpy() / maskings
    median = float(np.median(errors))
    order = np.argsort(-errors)[:n]
    return [{"name": data.names[i], "error": float(errors[i]), "error_over_median": float(errors[i] / median)}
            for i in order]


def main(argv=None):
    parser = argparse.ArgumentParser(description="What a data folder holds, as training would read it "
                                     "(the demo and transfer sets are built by makedata.py).")
    parser.add_argument("--inspect", metavar="PATH", required=True, help="report layout, slices, subjects, tumor "
                        "share, sizes, dtypes and the files training would refuse, of a data folder")
    parser.add_argument("--slice-axis", type=int, default=2, help="NIfTI: the axis to slice along")
    parser.add_argument("--layout", default=None, help="read the folder in this layout "
                        f"({', '.join(LAYOUTS)}; default LAYOUT, auto)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--checkpoint", default=None, metavar="MAE",
                        help="also list the images least like the rest: the highest reconstruction error of this "
                             "pre-trained MAE (a CT, an abdomen or a photo among MRI slices)")
    parser.add_argument("--outliers", type=int, default=20, metavar="N", help="with --checkpoint: how many to list")
    args = parser.parse_args(argv)
    from config import load_config
    cfg = load_config()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = inspect(args.inspect, cfg.SUBJECT_PATTERN, args.slice_axis, args.layout or cfg.LAYOUT,
                    cfg.DUPLICATE_CORRELATION)
    print(f"{args.inspect}: {r['layout']} layout\n" + "\n".join(f"  {k:10s} {v}" for k, v in report_lines(r)))
    for w in caught:
        print(f"  note: {w.message}")
    if args.checkpoint:
        r["least_alike"] = least_alike(args.inspect, args.checkpoint, cfg, args.layout or cfg.LAYOUT, args.outliers)
        print(f"  least like the rest (masked-patch error of {args.checkpoint} over the head, x the median):\n"
              + "\n".join(f"    {o['name']}  {o['error_over_median']:.1f}x" for o in r["least_alike"]))
    if args.json:
        from records import save_json
        save_json(args.json, r)
    return r


if __name__ == "__main__":
    from records import run_cli
    run_cli(main)

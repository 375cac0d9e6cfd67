"""Where the slices of a data folder are, with their masks, subjects and classes: one finder a layout.

    spec        <root>/HR/ slices with MASK/ of the same names (the spec's), or a flat folder of slices
    nifti       <root>[/HR]/ volumes (NIfTI, NRRD) with masks of the same names in MASK/ or masks/
    kaggle_lgg  <root>[/kaggle_3m]/<patient>/<patient>_<n>.tif with <patient>_<n>_mask.tif
    classes     <root>/<class>/ slices: the folder is the label (most public 2-D tumor sets)

Every layout is tried (`discover`); a folder more than one recognizes is refused until LAYOUT names one. A new
layout is one function in LAYOUTS. Nothing is decoded here but volume headers.
"""
import os
import re
import warnings
from dataclasses import dataclass

from imaging import FORMATS, VOLUME_KINDS, DataError, list_images, list_names, split_ext, volume_header
from volumes import VolumeView

SLICE_KINDS = ("tiff", "png", "jpeg", "dicom")  # one slice per file; VOLUME_KINDS hold many


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
NEGATIVE_CLASS = re.compile(r"^(no|none|normal|healthy|negative|control|no[_ -]?tumou?r)$", re.IGNORECASE)
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


def subject_of(path: str, pattern: str) -> str:
    stem = _stem(path)
    m = re.match(pattern, stem)
    return m.group(1) if m and m.group(1) else stem

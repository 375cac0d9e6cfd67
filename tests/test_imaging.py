"""One image IO table for every phase: what enhance.py restores, training reads, and the formats are
decoded as what they are."""
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

import dataset
import imaging
from imaging import DataError


def brain(shape=(72, 80), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    head = (((yy - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((xx - shape[1] / 2) / (shape[1] * 0.35)) ** 2) < 1
    return head * (120 + 40 * np.sin(xx / 5.0)) + rng.normal(0, 3, shape)


def test_training_reads_dicom_slices_as_enhance_does(tmp_path):
    from pydicom.data import get_testdata_file
    os.makedirs(tmp_path / "HR")
    for s in range(3):
        shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "HR" / f"subj{s}_000.dcm")
    data = dataset.load_slices(str(tmp_path), 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert len(data) == 3 and sorted(set(data.subjects)) == ["subj0", "subj1", "subj2"]
    scan = imaging.read_scan(str(tmp_path / "HR" / "subj0_000.dcm"))
    assert np.array_equal(imaging.read_slice(str(tmp_path / "HR" / "subj0_000.dcm")), scan.slices[0].astype(np.float32))


def test_palette_png_is_read_as_its_colours_not_its_indices(tmp_path):
    grey = brain().clip(0, 255).astype(np.uint8)
    Image.fromarray(grey).convert("P", palette=Image.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    got = imaging.read_slice(str(tmp_path / "p.png"))
    assert got.max() > 100  # the palette's colours (up to ~160 here), not indices 0-3
    assert np.corrcoef(got.ravel(), grey.ravel())[0, 1] > 0.9


def test_grey_plus_alpha_png_is_its_grey_channel(tmp_path):
    grey = brain().clip(0, 255).astype(np.uint8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), mode="LA").save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="la.png: its alpha channel is not read"):
        assert np.array_equal(imaging.read_slice(str(tmp_path / "la.png")), grey.astype(np.float32))


def test_a_folder_of_volumes_and_slices_is_refused_naming_both(tmp_path):
    os.makedirs(tmp_path / "HR")
    nib.save(nib.Nifti1Image(np.stack([brain()] * 4, -1).astype(np.int16), np.eye(4)), tmp_path / "HR" / "v.nii.gz")
    tifffile.imwrite(tmp_path / "HR" / "s_001.tif", brain().astype(np.uint8))
    with pytest.raises(DataError, match="both volumes.*v.nii.gz.*single-slice images.*s_001.tif"):
        dataset.discover(str(tmp_path))


def test_a_4d_volume_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), tmp_path / "v4.nii.gz")
    with pytest.raises(DataError, match="must be 3-D, got shape"):
        dataset.discover(str(tmp_path))


def test_a_data_path_that_is_a_file_says_so(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"")
    with pytest.raises(DataError, match="is a file"):
        dataset.discover(str(tmp_path / "x.tif"))


@pytest.mark.parametrize("name, kind", [("a.TIF", "tiff"), ("b.nii.gz", "nifti"), ("c.dcm", "dicom"), ("d.png", "png")])
def test_one_table_names_every_format(name, kind):
    assert imaging.kind_of(name) == kind and imaging.is_image(name)
    stem, ext = imaging.split_ext("dir/" + name)
    assert stem + ext == name


def test_outputs_keep_the_umask_mode(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", brain().astype(np.uint8))
    scan = imaging.read_scan(str(tmp_path / "in.tif"))
    old = os.umask(0o022)
    try:
        imaging.write_scan(scan, scan.slices, str(tmp_path / "out.tif"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "out.tif").st_mode & 0o777 == 0o644


def test_a_file_that_decodes_to_no_pixels_is_one_line(tmp_path, monkeypatch):
    # found by the fuzzed-bytes test: a TIFF whose series decodes to shape (0, H, W)
    tifffile.imwrite(tmp_path / "empty.tif", np.ones((16, 16), np.uint8))
    monkeypatch.setitem(imaging.READERS, "tiff", lambda path, meta: np.zeros((0, 16, 16), np.uint8))
    with pytest.raises(DataError, match="empty.tif: holds no pixels"):
        imaging.read_scan(str(tmp_path / "empty.tif"))

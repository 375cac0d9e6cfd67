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


def stored_as(img, codes):
    """The same head as img (the same voxel at each world position), stored in the axis order `codes`."""
    from nibabel.orientations import axcodes2ornt, ornt_transform
    return img.as_reoriented(ornt_transform(axcodes2ornt(nib.aff2axcodes(img.affine)), axcodes2ornt(codes)))


def test_a_volume_is_cut_the_same_whatever_voxel_order_it_was_stored_in(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(10, 1000, (20, 24, 16)).astype(np.int16)  # no symmetry: a turn or mirror shows
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    ras = nib.Nifti1Image(vol, affine)
    nib.save(ras, tmp_path / "ras.nii.gz")
    for codes in ("LAS", "PSL", "IRP"):
        other = stored_as(ras, codes)
        assert nib.aff2axcodes(other.affine) == tuple(codes)
        nib.save(other, tmp_path / f"{codes}.nii.gz")
        for axis in range(3):
            a = imaging.read_scan(str(tmp_path / "ras.nii.gz"), slice_axis=axis).slices
            b = imaging.read_scan(str(tmp_path / f"{codes}.nii.gz"), slice_axis=axis).slices
            assert np.array_equal(a, b), (codes, axis)
    # an axial slice is turned anterior up, the subject's right on the right: RAS's [x, y] is row -y, column x
    axial = imaging.read_scan(str(tmp_path / "ras.nii.gz")).slices
    assert axial.shape == (16, 24, 20) and np.array_equal(axial[3], vol[:, ::-1, 3].T)
    # training reads the slices predict and enhance read
    data = dataset.load_slices(str(tmp_path), 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    by_name = dict(zip(data.names, data.images))
    assert all(np.array_equal(by_name[f"ras[{i}]"], by_name[f"PSL[{i}]"]) for i in range(16))


def test_results_go_back_in_the_stored_voxel_order(tmp_path):
    vol = np.random.default_rng(1).integers(10, 1000, (20, 24, 16)).astype(np.int16)
    psl = stored_as(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), "PSL")
    nib.save(psl, tmp_path / "psl.nii.gz")
    scan = imaging.read_scan(str(tmp_path / "psl.nii.gz"))
    imaging.write_scan(scan, scan.slices, str(tmp_path / "back.nii.gz"))
    back = nib.load(tmp_path / "back.nii.gz")
    assert np.array_equal(back.get_fdata(), psl.get_fdata()) and np.allclose(back.affine, psl.affine)
    # half resolution: the two stored axes in the axial plane (P and L) halve, the one cut along (S) stays
    imaging.write_scan(scan, scan.slices[:, ::2, ::2], str(tmp_path / "coarse.nii.gz"), coarse=True)
    coarse = nib.load(tmp_path / "coarse.nii.gz")
    assert coarse.shape == (12, 16, 10) and np.allclose(coarse.header.get_zooms(), (2.0, 2.0, 2.0))
    assert nib.aff2axcodes(coarse.affine) == ("P", "S", "L")


def test_a_mask_is_cut_as_its_image_whatever_affine_it_was_saved_with(tmp_path):
    vol = np.full((20, 24, 16), 100, np.int16)
    vol[3:7, 15:20, 5:9] = 900  # a bright block, and the mask on it voxel for voxel
    mask = (vol == 900).astype(np.uint8)
    psl = stored_as(nib.Nifti1Image(vol, np.eye(4)), "PSL")
    os.makedirs(tmp_path / "MASK")
    nib.save(psl, tmp_path / "head.nii.gz")
    mask_psl = stored_as(nib.Nifti1Image(mask, np.eye(4)), "PSL").get_fdata().astype(np.uint8)
    nib.save(nib.Nifti1Image(mask_psl, np.eye(4)), tmp_path / "MASK" / "head.nii.gz")  # a tool that lost the affine
    data = dataset.load_slices(str(tmp_path), 32, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert data.labels.sum() == 4
    for img, m in zip(data.images[data.labels == 1], data.masks[data.labels == 1]):
        assert img[m].min() > img[~m].max()  # the mask lies on the block
    # enhance.py --mode inpaint --mask: the same
    scan = imaging.read_scan(str(tmp_path / "head.nii.gz"))
    hole = imaging.read_scan(str(tmp_path / "MASK" / "head.nii.gz"), view=scan.meta["view"]).slices != 0
    assert hole.sum() == 80 and scan.slices[hole].min() > scan.slices[~hole].max()
    nib.save(nib.Nifti1Image(mask_psl[:, :, :-1], np.eye(4)), tmp_path / "MASK" / "head.nii.gz")
    # every slice skipped, each saying why
    with pytest.warns(UserWarning, match="mask volume is 24x16x19 but its image is 24x16x20"), \
            pytest.raises(DataError, match="none of the 16 slices"):
        dataset.load_slices(str(tmp_path), 32, r"^(.+?)(?:_\d+)?$", quiet=True)


def test_a_twice_finer_result_places_every_voxel_where_the_stored_one_was(tmp_path):
    """zoom 2: each stored voxel's centre is the mean of its four new voxels' centres, in NIfTI (any stored
    voxel order) and DICOM (ImagePositionPatient moves with PixelSpacing); the slice axis is untouched."""
    import pydicom
    from pydicom.data import get_testdata_file
    vol = np.random.default_rng(1).integers(10, 1000, (10, 12, 9)).astype(np.int16)
    affine = np.array([[0, 0, -1.5, 30], [0.9, 0.1, 0, -20], [0, 1.2, 0.2, 5], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "v.nii.gz")
    scan = imaging.read_scan(str(tmp_path / "v.nii.gz"))
    finer = np.repeat(np.repeat(scan.slices, 2, axis=1), 2, axis=2)
    imaging.write_scan(scan, finer, str(tmp_path / "x2.nii.gz"), zoom=2)
    out = nib.load(tmp_path / "x2.nii.gz")
    cut = scan.meta["view"].cut_axis
    assert out.shape == tuple(n if a == cut else 2 * n for a, n in enumerate(vol.shape))
    for v in ([0, 0, 0], [3, 5, 2], [9, 11, 8]):
        u = [x if a == cut else 2 * x + 0.5 for a, x in enumerate(v)]  # the mean of the two new indices
        assert np.allclose(out.affine @ [*u, 1], affine @ [*v, 1])
    # DICOM: the first pixel's centre and the spacing
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    path = tmp_path / "s.dcm"
    ds.save_as(path)
    scan = imaging.read_scan(str(path))
    imaging.write_scan(scan, np.repeat(np.repeat(scan.slices, 2, axis=1), 2, axis=2), str(tmp_path / "x2.dcm"), zoom=2)
    back = pydicom.dcmread(tmp_path / "x2.dcm")
    assert (back.Rows, back.Columns) == (2 * ds.Rows, 2 * ds.Columns)
    assert np.allclose([float(v) for v in back.PixelSpacing], [float(v) / 2 for v in ds.PixelSpacing])

    def centre(d, r, c):
        row, col = np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float)
        sp = [float(v) for v in d.PixelSpacing]
        return np.array(d.ImagePositionPatient, float) + row * c * sp[1] + col * r * sp[0]
    for r, c in ((0, 0), (7, 3), (63, 63)):
        assert np.allclose(centre(ds, r, c), centre(back, 2 * r + 0.5, 2 * c + 0.5))

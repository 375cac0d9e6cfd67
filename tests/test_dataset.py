import dataclasses
import os

import numpy as np
import pytest
import tifffile
import torch

import augment
import dataset
import makedata
import splits
import imaging
import volumes
import restoration
from dataset import DataError


def test_reads_rgb_16bit_float_and_normalises(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    g = imaging.read_slice(str(tmp_path / "rgb.tif"))
    assert g.shape == (20, 30) and g.dtype == np.float32 and np.allclose(g, 200 * 0.7154, atol=1e-3)
    u16 = (np.arange(600).reshape(20, 30) * 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", u16)
    n, (lo, hi) = imaging.normalize_intensity(imaging.read_slice(str(tmp_path / "u16.tif")))
    assert n.min() == 0 and n.max() == 1 and lo < hi
    tifffile.imwrite(tmp_path / "f.tif", u16.astype(np.float32) / 7)
    assert imaging.read_slice(str(tmp_path / "f.tif")).max() == pytest.approx(59900 / 7, rel=1e-5)
    assert imaging.normalize_intensity(np.full((9, 9), 5.0, np.float32))[0].max() == 0


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"), (b"this is not a tiff", "cannot read the tiff header"),
])
def test_bad_files_are_named(tmp_path, content, problem):
    p = tmp_path / "bad scan ü.tif"
    p.write_bytes(content)
    with pytest.raises(DataError, match=problem) as e:
        imaging.read_slice(str(p))
    assert "bad scan ü.tif" in str(e.value)


def test_stack_and_nan_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 20, 20), np.uint8))
    with pytest.raises(DataError, match="holds 5 slices"):
        imaging.read_slice(str(tmp_path / "stack.tif"))
    a = np.ones((20, 20), np.float32)
    a[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a)
    with pytest.raises(DataError, match="NaN"):
        imaging.read_slice(str(tmp_path / "nan.tif"))


def test_fit_to_square_keeps_aspect_ratio():
    img = np.zeros((50, 100), np.float32)
    img[:, 40:60] = 1  # a vertical bar 20 wide, full height
    sq = imaging.fit_to_square(img, 100, order=0)
    assert sq.shape == (100, 100)
    rows = np.nonzero(sq.any(axis=1))[0]
    assert rows.min() == 25 and rows.max() == 74  # padded top and bottom, not stretched
    assert sq[50].sum() == 20


def test_split_never_shares_a_subject(tiny_data):
    data = dataset.load_slices(tiny_data, 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert set(data.subjects) == {"subj0", "subj1", "subj2", "subj3"}
    train, val = splits.split_by_subject(data.subjects, 0.25, seed=0)
    assert set(data.subjects[i] for i in train).isdisjoint(data.subjects[i] for i in val)
    assert len(train) + len(val) == len(data) and len(val) == 3
    assert data.labels.tolist() == [1.0, 0.0] * 6  # every other slice has a tumor
    assert data.images.shape == (12, 1, 64, 64) and 0 <= data.images.min() and data.images.max() <= 1


def test_unreadable_file_skipped_and_counted(tiny_data, capsys):
    open(os.path.join(tiny_data, "HR", "zz_broken_001.tif"), "wb").write(b"garbage")
    with pytest.warns(UserWarning, match="zz_broken_001.tif"):
        data = dataset.load_slices(tiny_data, 64, r"^(.+?)(?:_\d+)?$")
    assert len(data) == 12
    assert "skipped 1 of 13" in capsys.readouterr().out


def test_mask_size_mismatch_is_skipped(tiny_data):
    tifffile.imwrite(os.path.join(tiny_data, "MASK", "subj0_000.tif"), np.zeros((10, 10), np.uint8))
    with pytest.warns(UserWarning, match="mask is 10x10"):
        data = dataset.load_slices(tiny_data, 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert len(data) == 11


def test_empty_or_missing_folder_says_dataset_empty(tmp_path):
    with pytest.raises(DataError, match="Dataset empty.*nowhere"):
        dataset.discover(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "d" / "HR")
    with pytest.raises(DataError, match="Dataset empty"):
        dataset.discover(str(tmp_path / "d"))


def test_augment_is_seeded_and_in_range():
    x = torch.rand(4, 1, 32, 32)
    a = augment.augment(x, torch.Generator().manual_seed(3))
    b = augment.augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, augment.augment(x, torch.Generator().manual_seed(4)))


def test_wider_framing_shrinks_and_moves_that_share_of_the_heads_only():
    plain = augment.augment_params(2000, torch.Generator().manual_seed(5))
    none = augment.augment_params(2000, torch.Generator().manual_seed(5), wider=0.0)
    assert all(torch.equal(plain[k], none[k]) for k in plain)  # wider=0: the draws as they were
    half = augment.augment_params(2000, torch.Generator().manual_seed(5), wider=0.5)
    assert all(torch.equal(plain[k], half[k]) for k in ("angle", "flip", "gamma"))
    wide = half["scale"] != plain["scale"]
    assert 0.45 < wide.float().mean() < 0.55
    assert half["scale"][wide].min() < 0.47 and half["scale"].min() >= 0.45 and half["scale"].max() <= 1.1
    assert half["tx"][wide].abs().max() > 0.09 and half["tx"][~wide].abs().max() <= 0.05
    assert torch.equal(half["tx"][~wide], plain["tx"][~wide])


@pytest.mark.slow
def test_demo_builder_from_the_nilearn_template(tmp_path):
    dest = str(tmp_path / "demo" / "Brain_MRI")
    n = makedata.build_demo_data(dest, step=12, slab=2, gap=1)
    hr = sorted(os.listdir(os.path.join(dest, "HR")))
    assert n == len(hr) > 10 and hr == sorted(os.listdir(os.path.join(dest, "MASK")))
    assert {h.split("_")[1] for h in hr} == {"axial", "coronal", "sagittal"}
    masks = [tifffile.imread(os.path.join(dest, "MASK", h)) for h in hr]
    with_tumor = sum(m.any() for m in masks)
    assert 0.2 < with_tumor / n < 0.8
    # the tumor is painted into the image: it differs from the template where the mask says so
    img = tifffile.imread(os.path.join(dest, "HR", hr[0]))
    assert img.dtype == np.uint8 and img.max() > 100
    data = dataset.load_slices(dest, 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert len(set(data.subjects)) >= 6  # slabs are subjects
    assert not os.path.exists(dest + ".partial")


def test_kaggle_lgg_layout(tmp_path):
    rng = np.random.default_rng(0)
    for patient in ("TCGA_CS_4941_19960909", "TCGA_DU_5849_19950405"):
        folder = tmp_path / "kaggle_3m" / patient
        folder.mkdir(parents=True)
        for n in (1, 2, 3):
            tifffile.imwrite(folder / f"{patient}_{n}.tif", rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
            mask = np.zeros((256, 256), np.uint8)
            mask[100:120, 90:130] = 255 * (n == 2)
            tifffile.imwrite(folder / f"{patient}_{n}_mask.tif", mask)
    layout, sources = dataset.discover(str(tmp_path))
    assert layout == "kaggle_lgg" and len(sources) == 6
    data = dataset.load_slices(str(tmp_path), 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert set(data.subjects) == {"TCGA_CS_4941_19960909", "TCGA_DU_5849_19950405"}
    assert data.labels.sum() == 2 and data.has_mask.all()


def test_nifti_volume_layout_skips_empty_slices(tmp_path):
    import nibabel as nib
    (tmp_path / "MASK").mkdir()
    for name in ("sub-01", "sub-02"):
        vol = np.zeros((40, 48, 10), np.int16)
        vol[5:35, 6:42, 2:8] = np.arange(30 * 36 * 6).reshape(30, 36, 6) % 300 + 100  # slices 0,1,8,9 empty
        mask = np.zeros_like(vol, np.uint8)
        mask[10:20, 10:20, 4] = 1
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "MASK" / f"{name}.nii.gz")
    layout, sources = dataset.discover(str(tmp_path))
    assert layout == "nifti" and len(sources) == 20
    data = dataset.load_slices(str(tmp_path), 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert len(data) == 12 and set(data.subjects) == {"sub-01", "sub-02"}
    assert data.labels.sum() == 2 and "sub-01[4]" in data.names
    r = dataset.inspect(str(tmp_path))
    assert r["empty_slices_skipped"] == 8 and r["slices"] == 12 and r["dtypes"] == {"int16": 2}


def test_inspect_reports_unreadable_files(tiny_data, capsys):
    open(os.path.join(tiny_data, "HR", "subj7_000.tif"), "wb").write(b"\x00garbage")
    r = dataset.main(["--inspect", tiny_data])
    out = capsys.readouterr().out
    assert r["layout"] == "spec" and r["slices"] == 12 and r["subjects"] == 4 and len(r["unreadable"]) == 1
    assert "unreadable 1" in out and "subj7_000.tif" in out and "tumor share 50.0%" in out
    assert "72x80 x12" in out and "uint8" in out
    tifffile.imwrite(os.path.join(tiny_data, "HR", "subj8_000.tif"), np.zeros((40, 40), np.uint8))
    r = dataset.inspect(tiny_data)
    assert r["slices"] == 12 and any("constant image" in u for u in r["unreadable"])  # as load_slices skips it


def test_foreground_patches_pads_to_the_batch_and_marks_padding():
    from imaging import foreground_patches
    x = np.zeros((3, 1, 8, 8), np.float32)
    x[0, 0, :4, :4] = 1        # patch 0 of a 2x2 grid
    x[1, 0, 4:, :] = 1         # patches 2 and 3
    # x[2] is blank
    keep, valid = foreground_patches(x, 4, 0.01)
    assert keep.shape == valid.shape == (3, 2) and keep.dtype == np.int64
    assert keep[0, 0] == 0 and valid[0].tolist() == [True, False]
    assert keep[1].tolist() == [2, 3] and valid[1].all()
    assert valid[2].tolist() == [True, False]  # a blank slice still gives the encoder one patch
    keep, valid = foreground_patches(x, 4, -1)  # negative: every patch
    assert keep.tolist() == [[0, 1, 2, 3]] * 3 and valid.all()


@pytest.mark.parametrize("kind", ["block", "stripe", "blob"])
def test_synthetic_damage_lies_on_the_brain_and_grows_with_size(kind):
    brain = np.zeros((96, 96), bool)
    brain[10:86, 16:80] = True
    areas = []
    for size in restoration.DAMAGE_SIZES[kind].values():
        hole = restoration.synthetic_damage(kind, size, brain, np.random.default_rng(3))
        assert hole.shape == brain.shape and hole.any()
        assert brain[hole].mean() > 0.5  # centred on the brain
        areas.append(hole.sum())
    assert areas == sorted(areas) and areas[0] < areas[-1]


def test_local_biharmonic_fill_matches_the_whole_image_solve():
    from skimage.restoration import inpaint_biharmonic
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :90]
    img = np.sin(yy / 9.0) * np.cos(xx / 13.0) + 0.01 * rng.random((80, 90))
    hole = (abs(yy - 40) < 6) & (abs(xx - 30) < 9)
    local = restoration.biharmonic_fill(img, hole)
    assert np.array_equal(local[~hole], img[~hole])
    assert np.abs(local - inpaint_biharmonic(img, hole)).max() < 0.02
    weight = restoration.fill_weight(hole)
    assert (weight[~hole] == 0).all() and (weight[hole] > 0).all() and weight.max() == 1.0


def split_config(data):
    """Defaults (SPLIT_SEED 0, VAL_FRACTION 0.2: one of the 4 tiny subjects held out) on the tiny data."""
    from config import load_config
    return load_config(environ={"MIRAM_DATASET_PATH": data, "MIRAM_IMG_SIZE": "32"})


def test_split_follows_split_seed_not_seed(tiny_data):
    cfg = split_config(tiny_data)
    first = dataset.load_split(cfg, quiet=True)[1].subjects
    cfg = dataclasses.replace(cfg, SEED=7)  # another training seed: the same held-out subjects
    assert dataset.load_split(cfg, quiet=True)[1].subjects == first
    cfg = dataclasses.replace(cfg, SPLIT_SEED=1)  # 4 subjects, 1 held out: seed 1 holds out another one
    assert dataset.load_split(cfg, quiet=True)[1].subjects != first


def test_named_validation_subjects_are_held_out_and_a_wrong_name_is_refused(tiny_data):
    cfg = split_config(tiny_data)
    cfg = dataclasses.replace(cfg, VAL_SUBJECTS="subj2, subj0")
    train, val = dataset.load_split(cfg, quiet=True)
    assert set(val.subjects) == {"subj0", "subj2"} and set(train.subjects) == {"subj1", "subj3"}
    assert splits.split_record(cfg, train)["split"]["VAL_SUBJECTS"] == "subj2, subj0"
    cfg = dataclasses.replace(cfg, VAL_SUBJECTS="subj9")
    with pytest.raises(dataset.DataError, match=r"data: VAL_SUBJECTS names 'subj9', not a subject"):
        dataset.load_split(cfg, quiet=True)
    cfg = dataclasses.replace(cfg, VAL_SUBJECTS="subj0,subj1,subj2,subj3")
    with pytest.raises(dataset.DataError, match="every subject"):
        dataset.load_split(cfg, quiet=True)


def test_validation_on_subjects_a_checkpoint_trained_on_is_refused(tiny_data):
    cfg = split_config(tiny_data)
    train, val = dataset.load_split(cfg, quiet=True)
    state = splits.split_record(cfg, train)
    assert set(state["train_subjects"]) == set(train.subjects) and state["split"]["SPLIT_SEED"] == 0
    dataset.load_split(cfg, quiet=True, trained_on=[("mae.pth", state)])  # its own split: accepted
    dataset.load_split(cfg, quiet=True, trained_on=[("old.pth", {})])  # no record (older checkpoint): accepted
    # a child checkpoint inherits what its parent learned from, even subjects outside its own training split
    child = splits.split_record(cfg, val, state)
    assert set(child["train_subjects"]) == {"subj0", "subj1", "subj2", "subj3"}
    cfg = dataclasses.replace(cfg, SPLIT_SEED=1)
    with pytest.raises(DataError, match=r"mae\.pth was trained on 1 of the 1 validation subjects .*SPLIT_SEED=0"):
        dataset.load_split(cfg, quiet=True, trained_on=[("mae.pth", state)])


def test_resuming_under_another_split_is_refused(tiny_data):
    cfg = split_config(tiny_data)
    train = dataset.load_split(cfg, quiet=True)[0]
    saved = splits.split_record(cfg, train)
    splits.refuse_other_split(saved, splits.split_record(cfg, train), "checkpoint.pth")  # same split
    splits.refuse_other_split({}, splits.split_record(cfg, train), "checkpoint.pth")  # no record: nothing to check
    cfg = dataclasses.replace(cfg, SPLIT_SEED=1)
    moved = splits.split_record(cfg, dataset.load_split(cfg, quiet=True)[0])
    with pytest.raises(DataError, match=r"checkpoint\.pth: cannot resume under this split: .* 1 subject"):
        splits.refuse_other_split(saved, moved, "checkpoint.pth")


def test_the_subtle_lesion_family_is_small_dark_faint_and_inside_the_brain():
    yy, xx = np.mgrid[:160, :160]
    head = np.where(np.hypot(yy - 80, xx - 80) < 60, 120.0, 0.0)  # a flat 'brain'
    for seed in range(5):
        out, mask = makedata.paint_subtle_lesion(head, np.random.default_rng(seed))
        lesion = mask > 0
        assert 20 < lesion.sum() < 400  # small: a few patches at most
        assert (head[lesion] > 0).all()  # inside the brain
        assert 0.65 * 120 < out[lesion].min() < 0.9 * 120  # dark, low contrast
        assert out[lesion].max() < 1.15 * 120  # the rim only faintly brighter
        assert np.array_equal(out[~lesion & (np.hypot(yy - 80, xx - 80) > 59)], head[~lesion & (np.hypot(yy - 80, xx - 80) > 59)])
    again = makedata.paint_subtle_lesion(head, np.random.default_rng(0))
    assert np.array_equal(again[0], makedata.paint_subtle_lesion(head, np.random.default_rng(0))[0])


def test_the_subtle_painters_ranges_set_the_lesions_size_and_contrast():
    yy, xx = np.mgrid[:160, :160]
    head = np.where(np.hypot(yy - 80, xx - 80) < 60, 120.0, 0.0)
    paint = makedata.paint_subtle_lesion
    assert np.array_equal(paint(head, np.random.default_rng(3))[0],
                          paint(head, np.random.default_rng(3), radius=(3, 7), darkness=(0.70, 0.85))[0])  # defaults
    small, small_mask = paint(head, np.random.default_rng(3), radius=(3, 3), darkness=(0.5, 0.5))
    large, large_mask = paint(head, np.random.default_rng(3), radius=(10, 10), darkness=(0.5, 0.5))
    assert 2 * small_mask.sum() < large_mask.sum()
    assert large[large_mask > 0].min() == pytest.approx(0.5 * 120, abs=1)  # the core at half the tissue around it
    fainter = paint(head, np.random.default_rng(3), radius=(10, 10), darkness=(0.8, 0.8))[0]
    assert fainter[large_mask > 0].min() == pytest.approx(0.8 * 120, abs=1)


def test_fewer_labels_keep_subjects_whole():
    data = dataset.SliceSet(torch.zeros(12, 1, 8, 8), torch.zeros(12, 1, 8, 8, dtype=torch.bool), torch.zeros(12),
                            torch.ones(12, dtype=torch.bool), [f"s{i}" for i in range(12)],
                            [f"subj{i // 3}" for i in range(12)])
    half = data.subject_fraction(0.5, seed=0)
    assert len(half) == 6 and len(set(half.subjects)) == 2
    assert all(data.subjects.count(s) == half.subjects.count(s) for s in half.subjects)  # whole subjects
    assert half.names == data.subject_fraction(0.5, seed=0).names  # drawn by the seed
    assert len(data.subject_fraction(0.01, seed=0)) == 3  # at least one subject
    assert data.subject_fraction(1.0, seed=0) is data


def test_transfer_set_builds_from_packaged_heads_reproducibly_with_heads_kept_whole(tmp_path):
    import tifffile
    first, again = str(tmp_path / "t"), str(tmp_path / "u")
    n = makedata.build_transfer_data(first, per_subject=2)
    assert n == makedata.build_transfer_data(again, per_subject=2)
    names = sorted(os.listdir(os.path.join(first, "HR")))
    assert n == len(names) == 2 * len(makedata.TRANSFER_SOURCES) - 1  # the dipy T1 is a single slice
    assert names == sorted(os.listdir(os.path.join(first, "MASK")))
    for name in names:  # the same seed draws the same lesions
        for kind in ("HR", "MASK"):
            assert np.array_equal(tifffile.imread(os.path.join(first, kind, name)),
                                  tifffile.imread(os.path.join(again, kind, name)))
    s = dataset.load_slices(first, 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    assert sorted(set(s.subjects)) == sorted(f"{src[0]}_{src[3]}" for src in makedata.TRANSFER_SOURCES)
    assert int(s.labels.sum()) == len(makedata.TRANSFER_SOURCES) - 1  # the second slice of each head
    assert s.images.min() >= 0 and s.images.max() <= 1
    assert not os.path.exists(first + ".partial")


def test_anatomy_variants_stay_in_range_keep_masks_aligned_and_follow_the_seed():
    import torch
    masks = torch.zeros(6, 1, 64, 64, dtype=torch.bool)
    for i in range(6):
        masks[i, :, 10 + 5 * i:30 + 5 * i, 20:44] = True
    images = masks.float() * 0.9
    out_images, out_masks = augment.anatomy_variants(images, 3, seed=4, masks=masks.float())
    assert len(out_images) == len(out_masks) == 4 * 6 and torch.equal(out_images[:6], images)  # slices, then variants
    assert out_images.min() >= 0 and out_images.max() <= 1 and out_masks.max() <= 1
    assert type(out_images) is torch.Tensor and type(out_masks) is torch.Tensor

    def centre(a):
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        return torch.stack([(yy * a[0]).sum(), (xx * a[0]).sum()]) / a.sum()
    moved = cropped = 0
    for img, m, original in zip(out_images[6:], out_masks[6:], masks.repeat(3, 1, 1, 1)):
        if m.sum() < 0.5 * original.sum():  # a field of view cut into the object: the mask cut alike
            cropped += 1
        if m.sum() < 4:  # cut off entirely: nothing left to align
            continue
        # the image's object (bright, or T2-like darker, above the noise) is centred where its mask is, within
        # a pixel (the simulated low resolution blurs by up to 2.5 pixels; nearest downsampling moved it 2)
        assert (centre((img > 0.1).float()) - centre(m)).norm() < 1.0
        moved += not torch.equal(m > 0.5, masks[0] > 0.5)
    assert moved and cropped
    again = augment.anatomy_variants(images, 3, seed=4, masks=masks.float())
    assert torch.equal(again[0], out_images) and torch.equal(again[1], out_masks)
    assert not torch.equal(augment.anatomy_variants(images, 3, seed=5)[0], out_images)
    # training that reads no mask draws the same images without deforming masks
    alone, no_masks = augment.anatomy_variants(images, 3, seed=4)
    assert torch.equal(alone, out_images) and no_masks is None
    assert augment.anatomy_variants(images, 0, seed=4)[0] is images  # none asked: the slices as they are
    g = torch.Generator().manual_seed(0)
    picked = augment.variant_index(torch.arange(6), 6, 3, g)
    assert torch.equal(picked % 6, torch.arange(6)) and picked.max() < 24
    assert torch.equal(augment.variant_index(torch.arange(6), 6, 0, g), torch.arange(6))


def test_volume_slice_is_np_take_without_copying_the_volume():
    vol = np.asfortranarray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))  # NIfTI data are F-ordered
    for axis in range(3):
        for index in range(vol.shape[axis]):
            view = volumes.volume_slice(vol, index, axis)
            assert np.array_equal(view, np.take(vol, index, axis=axis)) and np.shares_memory(view, vol)


def test_anatomy_variants_cache_returns_the_same_draws_and_is_redrawn_for_other_slices_or_seeds(tmp_path, monkeypatch):
    import torch
    images = torch.zeros(3, 1, 32, 32)
    images[:, :, 8:24, 8:24] = 0.8
    cache = str(tmp_path / "anatomy_variants.pt")
    drawn, _ = augment.anatomy_variants(images, 2, seed=1, cache=cache)
    assert os.path.isfile(cache) and torch.equal(drawn, augment.anatomy_variants(images, 2, seed=1)[0])
    calls = []
    real = augment.anatomy_transform
    monkeypatch.setattr(augment, "anatomy_transform", lambda size: calls.append(1) or real(size))
    assert torch.equal(augment.anatomy_variants(images, 2, seed=1, cache=cache)[0], drawn) and not calls  # read back
    other, _ = augment.anatomy_variants(images, 2, seed=2, cache=cache)
    assert calls and not torch.equal(other, drawn)  # another seed: drawn again, and the cache replaced
    assert torch.equal(augment.anatomy_variants(images * 0.5, 2, seed=2, cache=cache)[0][:3], images * 0.5)
    with open(cache, "wb") as f:
        f.write(b"not a tensor file")
    assert torch.equal(augment.anatomy_variants(images, 2, seed=1, cache=cache)[0], drawn)  # a damaged cache: redrawn


def test_images_named_in_train_exclude_leave_training_only(tiny_data, tmp_path):
    from config import load_config
    from dataset import load_split
    env = {"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": tiny_data}
    train, val = load_split(load_config(environ=env), quiet=True)
    listed = tmp_path / "outliers.txt"
    listed.write_text(f"# the least alike\n{train.names[0]}\n\n{val.names[0]}  # kept for validation\n")
    train2, val2 = load_split(load_config(environ={**env, "MIRAM_TRAIN_EXCLUDE": str(listed)}), quiet=True)
    assert train2.names == train.names[1:] and val2.names == val.names
    listed.write_text("HR/nothing.tif\n")
    with pytest.raises(DataError, match=r"names 1 image\(s\) the data does not hold, e.g. 'HR/nothing.tif'"):
        load_split(load_config(environ={**env, "MIRAM_TRAIN_EXCLUDE": str(listed)}), quiet=True)

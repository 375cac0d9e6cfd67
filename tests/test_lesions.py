"""Real-lesion measurement on a tiny generated FLAIR-like set: lesion-shaped holes, the white-matter-mean
fill, the inpainting fine-tune on lesion shapes, and one fold of real.py's fold loop end to end."""
import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

import real
from conftest import tiny_args
from restoration import damaged_set, lesion_shapes, place_shape, white_matter_mean_fill

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import lesion_fold  # noqa: E402


def flair_like(rng, shape=(40, 48, 8), lesions=2):
    """A skull-stripped 'FLAIR' volume: an ellipsoid brain of white matter (0.5) with a grey rim (0.7), dark
    ventricles (0.1), bright lesions (1.0) in the white matter; -> (volume float32, mask uint8)."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = np.sqrt(z ** 2 / 0.8 + y ** 2 / 0.7 + x ** 2 / 0.7)
    vol = np.where(r < 1, 0.5, 0.0) + np.where((r > 0.8) & (r < 1), 0.2, 0.0)
    vol[(np.abs(y) < 0.15) & (np.abs(z) < 0.3) & (r < 0.5)] = 0.1
    mask = np.zeros(shape, np.uint8)
    for _ in range(lesions):
        c = [rng.integers(n // 3, 2 * n // 3) for n in shape[:2]]
        k = rng.integers(2, shape[2] - 2)
        mask[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 2, k - 1:k + 2] = 1  # 30 voxels a slice
    vol = np.where(mask > 0, 1.0, vol) + rng.normal(0, 0.02, shape) * (vol > 0)
    return vol.astype(np.float32), mask


def write_ms_set(root, subjects=4, seed=0):
    rng = np.random.default_rng(seed)
    for folder in ("HR", "MASK"):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    for s in range(subjects):
        vol, mask = flair_like(rng)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), os.path.join(root, "HR", f"MS_{s}.nii"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), os.path.join(root, "MASK", f"MS_{s}.nii"))
    return root


def test_lesion_holes_land_only_in_lesion_free_tissue_and_keep_their_shape():
    rng = np.random.default_rng(0)
    vol, mask = flair_like(rng)
    shapes = lesion_shapes(mask.transpose(2, 0, 1))
    assert shapes and all(s.sum() >= 3 for s in shapes)
    img, lesion = vol[:, :, 4], mask[:, :, 4] > 0
    brain = img > 0.05
    for shape in shapes:
        hole = place_shape(shape, brain, lesion, rng)
        if hole is None:
            continue
        assert hole.sum() == shape.sum()  # moved, never cut or grown
        assert brain[hole].all() and not (hole & lesion).any()
    # a shape larger than the brain fits nowhere
    assert place_shape(np.ones_like(brain), brain, lesion, rng) is None
    # the fine-tune's regions: real shapes clear of the slice's lesions, the truth under them the scan
    images = vol.transpose(2, 0, 1)[:, None]
    prefilled, weight, original = damaged_set(images, 2, 0, workers=1, shapes=shapes, lesions=mask.transpose(2, 0, 1) > 0)
    assert np.array_equal(original[:, 0], np.repeat(images[:, 0], 2, axis=0).astype(np.float32))
    holes = weight[:, 0] > 0
    assert not (holes & np.repeat(mask.transpose(2, 0, 1) > 0, 2, axis=0)).any()
    assert np.allclose(prefilled[~np.broadcast_to(holes[:, None], prefilled.shape)],
                       original[~np.broadcast_to(holes[:, None], original.shape)])


def test_the_white_matter_mean_fill_uses_the_surrounding_white_matter_only():
    img = np.full((40, 40), 0.5)
    img[:, :8] = 0.0            # background
    img[18:22, 10:14] = 0.1     # a dark ventricle beside the hole
    img[10:12, 20:26] = 0.8     # a bright grey-matter strip
    hole = np.zeros_like(img, bool)
    hole[16:24, 14:22] = True
    filled = white_matter_mean_fill(img, hole)
    assert np.allclose(filled[hole], 0.5) and np.array_equal(filled[~hole], img[~hole])
    lesion = np.zeros_like(hole)
    lesion[24:28, 14:22] = True
    img2 = np.where(lesion, 1.0, img)
    assert np.allclose(white_matter_mean_fill(img2, hole, lesion)[hole], 0.5)  # a known lesion is left out


def test_one_fold_of_the_loop_holds_its_subjects_out_of_every_model(tmp_path, monkeypatch):
    import classify
    import train
    root = write_ms_set(str(tmp_path / "ms"), subjects=4)
    monkeypatch.setitem(real.SETS, "ms_lesions", {**real.SETS["ms_lesions"], "MIRAM_DATA_PATH": root})
    monkeypatch.setattr(real, "OUT", str(tmp_path / "real"))
    monkeypatch.setitem(real.FOLDS, "ms_lesions", 2)
    folds = real.fold_subjects("ms_lesions")
    assert folds == [["MS_0", "MS_1"], ["MS_2", "MS_3"]]
    listed = [r for r in real.runs("ms_lesions", [0]) if r[0].startswith("fold")]
    assert len(listed) == 2 * 5 and listed[0][2]["MIRAM_VAL_SUBJECTS"] == "MS_0,MS_1"
    assert {r[2]["MIRAM_OUTPUT_PATH"] for r in listed[:8]} == {str(tmp_path / "real" / "ms_lesions" / f"fold{k}")
                                                              for k in (0, 1)}
    assert all(r[2]["MIRAM_CLS_PATCH_WEIGHT"] == "0" and r[2]["MIRAM_OUTPUT_PATH"].endswith(real.NO_OUTLINES)
               for r in listed[8:])
    # fold 0 in-process, as real.py runs each command
    out = listed[0][2]["MIRAM_OUTPUT_PATH"]
    held = ["--val-subjects", "MS_0,MS_1"]
    train.main(tiny_args(root, out, *held))
    classify.main(tiny_args(root, out, *held, "--n-viz", "0", "--cls-conv-evidence", "true"))
    train.main(tiny_args(root, out, *held, "--inpaint", "--inpaint-holes", "lesions"))
    report_path = os.path.join(out, "lesion_fold.json")
    report = lesion_fold.main(tiny_args(root, out, *held, "--json", report_path, "--holes-per-subject", "3"))
    assert report["subjects"] == ["MS_0", "MS_1"] and report["detection"]["n_ge20"] + report["detection"]["n_small"] > 0
    assert report["filling"]["n_holes"] > 0 and report["filling"]["changed_outside_holes"] == 0
    assert 0 <= report["pointing_ge20"]["pointing"] <= 1 and all(os.path.isfile(f) for f in report["figures"])
    assert real.main(["ms_lesions", "--summarize"]) == 0  # runs nothing, writes what has finished
    with open(tmp_path / "real" / "real_summary.json") as f:
        assert json.load(f)["ms_lesions"]["folds"][0]["subjects"] == ["MS_0", "MS_1"]
    summary = real.summarize_folds("ms_lesions")
    assert summary["filling_margin_db"]["biharmonic"]["n"] == 1
    assert summary["detection_auroc_ge20"]["mean"] == pytest.approx(report["detection"]["auroc_ge20"], nan_ok=True)
    json.dumps(summary)

"""bench/lesion_limit.py: the classifier on subtle lesions of several sizes and contrasts."""
import argparse
import glob
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import lesion_limit  # noqa: E402
from conftest import pretrain_tiny, tiny_args  # noqa: E402


def test_ranges_are_read_as_low_high_and_bad_ones_named():
    assert lesion_limit.span("3-7") == (3.0, 7.0) and lesion_limit.span("0.4-0.55") == (0.4, 0.55)
    for bad in ("7", "7-3", "a-b"):
        with pytest.raises(argparse.ArgumentTypeError, match=bad):
            lesion_limit.span(bad)


def test_the_table_has_a_row_per_cell_with_its_spread_where_there_are_seeds():
    row = {"radius": (3, 7), "darkness": (0.7, 0.85), "seeds": 2, "optimizer_steps": 400,
           "auroc": {"mean": 0.55, "sd": 0.02}, "pointing_game": {"mean": 0.1, "sd": 0.0},
           "median_mass": {"mean": 1.5, "sd": 0.3}, "blob_detector": {"slice_auroc": 0.61, "patch_auroc": 0.95}}
    text = lesion_limit.markdown([row, {**row, "seeds": 1, "radius": (9, 14)}])
    assert "| 3-7 | 0.7-0.85 | 2 | 0.550 ± 0.020 | 0.10 ± 0.00 | 1.5 ± 0.3 | 400 | 0.610 (0.950) |" in text
    assert "| 9-14 | 0.7-0.85 | 1 | 0.550 | 0.10 | 1.5 | 400 | 0.610 (0.950) |" in text
    scored = {**row, "transfer_auroc": {"mean": 0.71, "sd": 0.04}, "transfer_pointing_game": {"mean": 0.4, "sd": 0.1}}
    text = lesion_limit.markdown([scored, row])
    assert text.splitlines()[0].endswith(" transfer set, untrained there: AUROC / pointing game |")
    assert text.splitlines()[1].count("|") == text.splitlines()[0].count("|")
    assert "| 0.610 (0.950) | 0.710 ± 0.040 / 0.40 ± 0.10 |" in text
    assert text.splitlines()[-1].endswith("| 0.610 (0.950) | – |")


def test_the_transfer_figures_are_the_default_maps_where_the_run_had_a_transfer_set():
    view = {"auroc": 0.7, "localization": {"evidence": {"pointing_game": 0.4, "mass_inside_over_share_median": 9.0},
                                           "rollout": {"pointing_game": 0.1, "mass_inside_over_share_median": 2.0}}}
    m = {"default_heatmap": "evidence", "transfer": view}
    assert lesion_limit.transfer_figures(m) == {"transfer_auroc": 0.7, "transfer_pointing_game": 0.4}
    assert lesion_limit.transfer_figures({"default_heatmap": "evidence"}) == {}


@pytest.mark.slow
def test_each_cell_paints_its_own_set_and_a_repeat_runs_nothing(tmp_path, capsys, monkeypatch):
    import makedata
    build = makedata.build_demo_data
    # every third slice of the slabs: a third of each cell's set to train on, the same painter
    monkeypatch.setattr(makedata, "build_demo_data", lambda *a, **k: build(*a, step=3, **k))
    data, out = pretrain_tiny(str(tmp_path))
    args = tiny_args(data, out, "--radii", "3-4", "12-14", "--darkness", "0.4-0.5")
    rows = lesion_limit.main(args)
    assert [r["radius"] for r in rows] == [(3, 4), (12, 14)]
    sets = os.path.join(out, "lesion_limit", "data")
    assert sorted(os.listdir(sets)) == ["radius12-14_darkness0.4-0.5", "radius3-4_darkness0.4-0.5"]
    saved = json.load(open(os.path.join(out, "lesion_limit.json")))
    assert len(saved["runs"]) == 2 and all(0 <= r["auroc"] <= 1 for r in saved["runs"])
    # each run's figures are its own classification_metrics.json's
    cell = glob.glob(os.path.join(out, "lesion_limit", "radius3-4_darkness0.4-0.5_*_seed1"))[0]
    own = json.load(open(os.path.join(cell, "classification_metrics.json")))
    assert saved["runs"][0]["auroc"] == own["auroc"]
    assert all(0 <= r["blob_detector"]["slice_auroc"] <= 1 for r in saved["summary"])
    assert "seed 1:" in capsys.readouterr().out
    lesion_limit.main(args)
    assert "seed 1:" not in capsys.readouterr().out


@pytest.mark.slow
def test_the_blob_detector_finds_dark_lesions_and_not_faint_ones(tmp_path):
    import makedata
    from config import load_config
    cfg = load_config(argparse.Namespace(preset="demo"), environ={})  # 128 pixels: the lesions a few wide
    found = {}
    for darkness in ((0.05, 0.1), (0.95, 0.97)):
        data = str(tmp_path / f"d{darkness[0]}")
        makedata.build_demo_data(data, lesions="subtle", painter_args={"radius": (12, 14), "darkness": darkness})
        found[darkness] = lesion_limit.blob_detector(cfg, data)
    dark, faint = found[(0.05, 0.1)], found[(0.95, 0.97)]
    assert dark["patch_auroc"] > 0.9 and faint["patch_auroc"] < dark["patch_auroc"] - 0.15  # found where it is
    # a slice's darkest blob is often a ventricle: the slice is found less surely than the patch
    assert faint["slice_auroc"] < dark["slice_auroc"] - 0.1 and dark["slice_auroc"] < dark["patch_auroc"]


@pytest.mark.slow
def test_the_convolutional_peer_learns_dark_lesions_from_pixel_labels(tmp_path):
    import makedata
    from config import load_config
    cfg = load_config(argparse.Namespace(preset="tiny"), environ={})
    data = str(tmp_path / "dark")
    # every other slice of the slabs: half the set, the same lesion family
    makedata.build_demo_data(data, step=2, lesions="subtle", painter_args={"radius": (12, 14), "darkness": (0.05, 0.1)})
    found = lesion_limit.cnn_peer(cfg, data, size=64, epochs=6)
    assert found["size"] == 64 and found["epochs"] == 6
    assert found["train_auroc"] > 0.8 and found["val_auroc"] > 0.8
    row = {"radius": (12, 14), "darkness": (0.05, 0.1), "seeds": 1, "optimizer_steps": 10,
           "auroc": {"mean": 0.5, "sd": 0.0}, "pointing_game": {"mean": 0.1, "sd": 0.0},
           "median_mass": {"mean": 1.5, "sd": 0.0}, "blob_detector": {"slice_auroc": 0.6, "patch_auroc": 0.9},
           "cnn_peer": found}
    assert f"| {found['val_auroc']:.3f} ({found['train_auroc']:.3f}) at 64 px, 6 epochs |" in lesion_limit.markdown([row])

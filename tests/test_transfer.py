"""TRANSFER_PATH: every phase's quality figures on a second set, never trained on, beside the validation split's."""
import json
import os
import sys

import numpy as np
import pytest

import classify
import demo
import evaluate
import train
from config import load_config
from conftest import tiny_args, write_tiny_dataset
from dataset import load_transfer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import report  # noqa: E402


@pytest.mark.slow
def test_every_phase_reports_the_transfer_set_beside_validation(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "data"))
    other = write_tiny_dataset(str(tmp_path / "other"), n_subjects=2, seed=5, prefix="head")
    out = str(tmp_path / "o")
    args = tiny_args(data, out, "--transfer-path", other)
    train.main(args)
    train.main(args + ["--inpaint"])
    evaluate.main(args + ["--adapt-steps", "2"])
    classify.main(args + ["--n-viz", "0"])
    ev = json.load(open(os.path.join(out, "eval_metrics.json")))
    assert ev["transfer"]["n_images"] == 6 and ev["n_images"] < 12  # all of the other set; the validation split
    assert ev["transfer"]["miram"]["fine"]["masked"]["psnr"] != ev["miram"]["fine"]["masked"]["psnr"]
    # each head's margin, over its own slices, against the set's best classical fill
    heads, best = ev["transfer"]["per_subject"], ev["transfer"]["margin_db"]["vs"]
    assert sum(h["n_images"] for h in heads.values()) == 6 and len(heads) == 2
    for subject, h in heads.items():
        rows = [i for i, n in enumerate(ev["transfer"]["per_image"]["names"]) if n.startswith(subject)]
        ours = np.mean([ev["transfer"]["per_image"]["miram"]["fine"]["masked"]["psnr"][i] for i in rows])
        theirs = np.mean([ev["transfer"]["per_image"][best]["fine"]["masked"]["psnr"][i] for i in rows])
        assert h["margin_db"] == pytest.approx(ours - theirs) and h["n_images"] == len(rows)
    assert "per_subject" not in ev  # the validation split: many slabs of one template, no heads to tell apart
    # the fills adapted to each image and blended in seamlessly, on both sets, with their own margins and per head
    for part in (ev, ev["transfer"]):
        for fill in ("adapted", "seamless", "adapted_seamless"):
            ours = np.mean(part["per_image"][f"miram_{fill}"]["fine"]["masked"]["psnr"])
            assert part[f"margin_db_{fill}"]["masked_psnr"] == pytest.approx(
                ours - part["baselines"][part[f"margin_db_{fill}"]["vs"]]["masked"]["psnr"])
            assert part[f"miram_{fill}"] != part["miram"]
        assert part["adapt"]["steps"] == 2
    assert all(f"margin_db_{fill}" in h for h in heads.values() for fill in ("adapted", "seamless", "adapted_seamless"))
    section = "\n".join(report.evaluation_section(ev))
    assert "Per head" in section and "MIRAM adapted to each image (2 steps), blended in seamlessly" in section
    assert os.path.getsize(os.path.join(out, "miram_eval_transfer.png")) > 0  # a slice of each head
    assert evaluate.one_slice_per_subject({"a": [0, 1, 2], "b": [3], "c": [4, 5]}, 2) == [1, 3]
    inpaint = json.load(open(os.path.join(out, "inpaint_metrics.json")))
    assert inpaint["transfer"]["n_regions"] == 2 * 6 and inpaint["validation"]["hole_mse"] > 0
    log = [json.loads(line) for line in open(os.path.join(out, "inpaint_log.jsonl"))]
    assert inpaint["validation"]["hole_mse"] == pytest.approx(min(h["val_loss"] for h in log))  # the best model's
    clf = json.load(open(os.path.join(out, "classification_metrics.json")))
    assert clf["transfer"]["n_subjects"] == 2 and sum(map(sum, clf["transfer"]["confusion_matrix"])) == 6
    assert "pointing_game" in clf["transfer"]["localization"]["evidence"]
    # per head: its slices' own metrics, which add up to the set's
    per_head = clf["transfer"]["per_subject"]
    assert sorted(per_head) == sorted(heads) and sum(h["n"] for h in per_head.values()) == 6
    assert sum(h["n_positive"] for h in per_head.values()) == clf["transfer"]["n_positive"]
    assert all(h["auroc"] is None or 0 <= h["auroc"] <= 1 for h in per_head.values())
    assert "Per head (the default map" in "\n".join(report.classification_section([clf]))
    screen = demo.screen({"run": {"cpu": "cpu"}, "total_minutes": 1, "phases": [],
                          "headline": demo.headline(load_config(args=None, environ={"MIRAM_OUTPUT_PATH": out}), None)})
    assert f"AUROC {clf['transfer']['auroc']:.3f} without training on it" in screen
    assert f"{ev['transfer']['margin_db']['masked_psnr']:+.2f} dB over" in screen.split("transfer set")[1]
    t = ev["transfer"]
    assert (f"(adapted {t['margin_db_adapted']['masked_psnr']:+.2f}, seamless {t['margin_db_seamless']['masked_psnr']:+.2f}, "
            f"adapted seamless {t['margin_db_adapted_seamless']['masked_psnr']:+.2f} dB)") in screen


def test_a_transfer_set_that_is_the_training_data_is_not_reported_as_one(tiny_data, capsys):
    cfg = load_config(environ={"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": tiny_data, "MIRAM_TRANSFER_PATH": tiny_data})
    assert load_transfer(cfg, 64) == (None, "")
    assert "is the data this run learns from" in capsys.readouterr().out
    assert load_transfer(load_config(environ={"MIRAM_PRESET": "tiny"}), 64) == (None, "")  # none configured


@pytest.mark.slow
def test_the_inpainting_benchmark_scores_both_sets(tmp_path, monkeypatch):
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import inpaint_quality
    data = write_tiny_dataset(str(tmp_path / "data"))
    other = write_tiny_dataset(str(tmp_path / "other"), n_subjects=2, seed=5, prefix="head")
    out = str(tmp_path / "o")
    train.main(tiny_args(data, out, "--img-size", "128"))  # the largest damage would cover a whole 64 px tile
    for key, value in {"PRESET": "tiny", "DATA_PATH": data, "OUTPUT_PATH": out, "TRANSFER_PATH": other}.items():
        monkeypatch.setenv("MIRAM_" + key, value)
    path = str(tmp_path / "q.json")
    inpaint_quality.main(["--max-images", "2", "--json", path])
    q = json.load(open(path))
    assert q["validation"]["n_images"] == 2 and q["transfer"]["n_images"] == 2
    assert set(q["transfer"]["mean_psnr"]) == {"miram_mae", "biharmonic", "linear"}
    assert q["transfer"]["scores"] != q["validation"]["scores"]
    # at the slices' own size (72 x 80 here, the model's 128 there): what enhance.py meets
    inpaint_quality.main(["--max-images", "2", "--native", "--json", path])
    native = json.load(open(path))
    assert native["native"] and native["validation"]["n_images"] == 2 and native["transfer"]["n_images"] == 2
    assert native["validation"]["scores"] != q["validation"]["scores"]
    assert 0 < native["validation"]["reconstruct_psnr"] < 60

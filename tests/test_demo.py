"""demo.py: every phase as its own command, then one screen and demo_summary.json."""
import json
import os

import pytest

import demo
from conftest import tiny_args, write_tiny_dataset


@pytest.mark.slow
def test_demo_runs_every_phase_and_summarizes_them(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "o")
    scan = os.path.join(data, "HR", "subj1_001.tif")
    assert demo.main(tiny_args(data, out, "--slice", scan, "--export-iters", "2", "--skip-spec")) == 0
    summary = json.load(open(os.path.join(out, "demo_summary.json")))
    assert [p["phase"] for p in summary["phases"]] == ["pre-training", "inpainting fine-tune", "evaluation",
                                                       "classification", "one prediction", "restoration", "deployment"]
    metrics = json.load(open(os.path.join(out, "classification_metrics.json")))
    evaluation = json.load(open(os.path.join(out, "eval_metrics.json")))
    h = summary["headline"]
    assert h["auroc"] == metrics["auroc"] and h["margin_over_best_classical_db"] == evaluation["margin_db"]["masked_psnr"]
    assert 0 < h["demo_slice_probability"] < 1 and os.path.isfile(os.path.join(out, "restored_demo.tif"))
    assert sum(p["seconds"] for p in summary["phases"]) <= summary["total_minutes"] * 60 + 1
    screen = capsys.readouterr().out.split("MIRAM demo on ")[-1]
    assert f"AUROC {metrics['auroc']:.3f}" in screen and "deployment" in screen


def test_a_failing_phase_stops_the_demo_with_its_exit_status(tmp_path):
    # no data folder: pre-training fails, nothing after it runs
    code = demo.main(tiny_args(str(tmp_path / "none"), str(tmp_path / "o")))
    assert code == 1 and not os.path.exists(tmp_path / "o" / "demo_summary.json")

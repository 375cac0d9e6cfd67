"""demo.py: every phase as its own command, then one screen and demo_summary.json."""
import os

import pytest

import demo
from conftest import tiny_args


def test_only_the_epochs_this_invocation_ran_count_as_its_phase_time():
    import datetime
    import time
    now = time.time()
    stamp = lambda t: datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")  # noqa: E731
    history = [{"epoch": 1, "seconds": 5.0, "run": {"date": stamp(now - 3600)}}, {"epoch": 2, "seconds": 5.0},
               {"epoch": 3, "seconds": 2.0, "run": {"date": stamp(now + 1)}}, {"epoch": 4, "seconds": 2.0}]
    assert [h["epoch"] for h in demo.epochs_since(history, now)] == [3, 4]  # resumed after epoch 2
    assert demo.epochs_since(history[:2], now) == []  # nothing to do this time: no epoch ran


@pytest.mark.slow
def test_a_failing_phase_stops_the_demo_with_its_exit_status(tmp_path):
    # no data folder: pre-training fails, nothing after it runs
    code = demo.main(tiny_args(str(tmp_path / "none"), str(tmp_path / "o")))
    assert code == 1 and not os.path.exists(tmp_path / "o" / "demo_summary.json")


def test_the_summary_says_whether_the_demo_slice_was_called_right(tmp_path):
    import numpy as np
    import tifffile
    for folder in ("HR", "MASK"):
        os.makedirs(tmp_path / folder)
    tumor, clean = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    tumor[2:4, 2:4] = 255
    for name, mask in (("a.tif", tumor), ("b.tif", clean)):
        tifffile.imwrite(tmp_path / "HR" / name, np.full((8, 8), 100, np.uint8))
        tifffile.imwrite(tmp_path / "MASK" / name, mask)
    tifffile.imwrite(tmp_path / "HR" / "c.tif", np.full((8, 8), 100, np.uint8))  # no mask: no verdict
    tifffile.imwrite(tmp_path / "MASK" / "e.tif", tumor)  # paired by stem, as the reader pairs: e.png with e.tif
    from PIL import Image
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "HR" / "e.png")
    assert [demo.slice_has_tumor(str(tmp_path / "HR" / n)) for n in ("a.tif", "b.tif", "c.tif", "e.png")] == \
        [True, False, None, True]

    def line(probability, has_tumor, validation=None):
        h = {"demo_slice_probability": probability}
        if has_tumor is not None:
            h.update(demo_slice_has_tumor=has_tumor, demo_slice_threshold=0.5)
        if validation is not None:
            h["demo_slice_validation_threshold"] = validation
        summary = {"run": {"cpu": "x"}, "total_minutes": 1.0, "phases": [], "headline": h}
        return next(s for s in demo.screen(summary).splitlines() if "demo slice" in s)
    assert "a tumor in its mask: wrong" in line(0.114, True) and "a tumor in its mask: right" in line(0.9, True)
    assert "no tumor in its mask: right" in line(0.2, False) and "in its mask" not in line(0.2, None)
    # the validation split's operating threshold beside the fixed one: the call is judged at both
    assert "wrong at the threshold 0.5, right at the validation split's 0.1" in line(0.114, True, 0.1)


@pytest.mark.heavy
def test_demo_runs_every_phase_and_summarizes_them(tmp_path):
    """`python demo.py` on tiny data: every phase as its own command, export_deploy.py --short included (the
    peer, timed at the spec's size, has a test of its own)."""
    import json
    from conftest import write_tiny_dataset
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "o")
    scan = os.path.join(data, "HR", "subj1_001.tif")
    assert demo.main(tiny_args(data, out, "--slice", scan, "--export-iters", "3", "--skip-spec")) == 0
    summary = json.load(open(os.path.join(out, "demo_summary.json")))
    assert [p["phase"] for p in summary["phases"]] == ["pre-training", "inpainting fine-tune", "evaluation",
                                                       "classification", "one prediction", "restoration", "deployment"]
    metrics = json.load(open(os.path.join(out, "classification_metrics.json")))
    evaluation = json.load(open(os.path.join(out, "eval_metrics.json")))
    h = summary["headline"]
    assert h["auroc"] == metrics["auroc"] and h["margin_over_best_classical_db"] == evaluation["margin_db"]["masked_psnr"]
    assert 0 < h["demo_slice_probability"] < 1 and os.path.isfile(os.path.join(out, "restored_demo.tif"))
    assert h["demo_slice_has_tumor"] is True  # subj1_001 has a blob in its mask
    # the phases that need only the pre-trained MAE ran side by side, sharing the cores, and the demo's wall
    # time is no more than the steps' in turn (the longer lane of a step counting)
    side = {p["phase"]: p for p in summary["phases"] if "beside" in p}
    assert side["classification"]["beside"] == ["inpainting fine-tune", "evaluation"]
    assert side["evaluation"]["beside"] == ["classification"] and side["classification"]["threads"] >= 1
    seconds = {p["phase"]: p["seconds"] for p in summary["phases"]}
    lanes = max(seconds["inpainting fine-tune"] + seconds["evaluation"], seconds["classification"])
    in_turn = sum(s for name, s in seconds.items() if name not in side) + lanes
    assert in_turn <= summary["total_minutes"] * 60 + 1 < sum(seconds.values()) + 1
    # where each phase's time went: its named stages, no more than its wall time
    assert {"epochs", "data read"} <= set(next(p for p in summary["phases"] if p["phase"] == "pre-training")["stages"])
    assert all(sum(p["stages"].values()) <= p["seconds"] + 1 for p in summary["phases"] if "stages" in p)
    trained = {p["phase"]: p for p in summary["phases"] if "epochs" in p}
    assert set(trained) == {"pre-training", "inpainting fine-tune", "classification"}
    assert all(p["epochs"] >= 1 and 0 <= p["epoch_seconds"] <= p["seconds"] for p in trained.values())


def test_a_phases_stages_are_timed_summed_and_shown_with_the_rest(tmp_path):
    import json
    import time
    import records
    start = time.time() - 1
    for _ in range(2):  # a stage run twice adds up
        with records.stage("figures drawn"):
            time.sleep(0.05)
    path = str(tmp_path / "stage_times_x.json")
    records.save_stages(path)
    saved = json.load(open(path))
    assert 0.1 <= saved["seconds"]["figures drawn"] < 1
    assert demo.stages_since(saved, start) == saved["seconds"]
    assert demo.stages_since(saved, time.time() + 5) is None  # written before this phase started: another's
    line = demo.phase_line({"phase": "pre-training", "seconds": 60.0, "epochs": 3,
                            "stages": {"epochs": 50.0, "data read": 4.0, "tiny": 0.2}})
    assert "3 epochs 50s, data read 4s, the rest 6s" in line and "tiny" not in line


def test_lanes_share_the_cores_and_a_lane_alone_keeps_them():
    assert demo.lane_threads([["a"]], cpus=2) is None
    assert demo.lane_threads([["a"], ["b"]], cpus=2) == 1 and demo.lane_threads([["a"], ["b"]], cpus=8) == 4
    assert demo.lane_threads([["a"], ["b"]], cpus=1) == 1
    steps = demo.phases(demo.get_args_parser().parse_args([]), type("C", (), {"OUTPUT_PATH": "o"})())
    side = [step for step in steps if len(step) > 1]
    assert [[name for name, *_ in lane] for lane in side[0]] == [["inpainting fine-tune", "evaluation"], ["classification"]]


def test_the_showcase_prediction_is_called_at_the_validation_splits_threshold(tmp_path):
    import json
    cfg = type("C", (), {"artifact": lambda self, name, suffix="": str(tmp_path / f"{name}{suffix}.json")})()
    assert demo.validation_threshold(cfg) == []  # no classifier yet: the setting's threshold
    for chosen, flag in ((0.3217, ["--cls-threshold", "0.3217"]), (float("nan"), []), (None, [])):
        json.dump({"operating_point": {"rule": "Youden", "threshold": chosen}}, open(tmp_path / "classification_metrics.json", "w"))
        assert demo.validation_threshold(cfg) == flag

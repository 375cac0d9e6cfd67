"""demo.py: every phase as its own command, then one screen and demo_summary.json (its run on tiny data is
test_export.py's fixture)."""
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

"""bench/compare.py: label efficiency over variants, label fractions and seeds."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import compare  # noqa: E402
from conftest import pretrain_tiny, tiny_args  # noqa: E402


def run(variant, fraction, seed, auroc, pointing):
    return {"variant": variant, "fraction": fraction, "seed": seed, "auroc": auroc, "pointing_game": pointing,
            "median_mass": 4.0, "optimizer_steps": 100, "train_slices": 20, "train_subjects": 2}


def test_groups_are_summarised_and_differences_judged_against_the_seeds_spread():
    runs = [run("finetune", 1.0, s, a, 0.8) for s, a in ((1, 0.90), (2, 0.94), (3, 0.92))]
    runs += [run("from_scratch", 1.0, s, a, 0.8) for s, a in ((1, 0.60), (2, 0.62), (3, 0.58))]
    runs += [run("linear_probe", 1.0, s, a, 0.8) for s, a in ((1, 0.80), (2, 0.99), (3, 0.91))]
    rows = {r["variant"]: r for r in compare.summarise(runs)}
    assert rows["finetune"]["auroc"]["mean"] == pytest.approx(0.92) and rows["finetune"]["seeds"] == 3
    assert rows["finetune"]["auroc"]["sd"] == pytest.approx(0.02)  # sample standard deviation
    text = compare.markdown(list(rows.values()))
    assert "0.920 ± 0.020" in text
    assert "100% of the labels, fine-tuned minus from_scratch: AUROC +0.320 (beyond" in text
    assert "fine-tuned minus linear_probe: AUROC +0.020 (within" in text  # the probe's seeds spread widely
    assert "pointing game +0.00 (within" in text


@pytest.mark.slow
def test_every_run_is_a_classify_command_and_a_repeat_skips_finished_runs(tmp_path, capsys):
    data, out = pretrain_tiny(str(tmp_path))
    args = tiny_args(data, out, "--seeds", "1", "--fractions", "1", "0.5", "--variants", "linear_probe")
    rows = compare.main(args)
    assert sorted((r["fraction"], r["seeds"]) for r in rows) == [(0.5, 1), (1.0, 1)]
    saved = json.load(open(os.path.join(out, "compare.json")))
    assert len(saved["runs"]) == 2 and os.path.isfile(os.path.join(out, "compare.png"))
    half = [r for r in saved["runs"] if r["fraction"] == 0.5]
    assert all(r["train_subjects"] == 2 for r in half)  # half of the 3 training subjects, rounded, whole
    assert "seed 1:" in capsys.readouterr().out  # each run reported as it finished
    compare.main(args)  # nothing left to run
    assert "seed 1:" not in capsys.readouterr().out

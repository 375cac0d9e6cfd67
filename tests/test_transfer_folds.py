"""bench/transfer_folds.py: the classifier on a few-head set's own labels, each head held out in turn."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import transfer_folds  # noqa: E402
from conftest import pretrain_tiny, tiny_args, write_tiny_dataset  # noqa: E402
from dataset import SliceSet  # noqa: E402


def test_only_heads_with_both_classes_are_held_out():
    subjects = ["a", "a", "b", "b", "c", "d", "d"]
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    has_mask = torch.tensor([True, True, True, True, True, True, False])  # d's tumor-free slice has no mask
    data = SliceSet(torch.zeros(7, 1, 4, 4), torch.zeros(7, 1, 4, 4, dtype=torch.bool), labels, has_mask,
                    [f"s{i}" for i in range(7)], subjects)
    assert transfer_folds.held_out_heads(data) == ["a"]


def test_the_table_has_a_row_per_head_and_their_mean():
    fig = {"auroc": {"mean": 0.7, "sd": 0.1}, "pointing_game": {"mean": 0.4, "sd": 0.0},
           "median_mass": {"mean": 9.0, "sd": 1.0}}
    rows = [{"head": "h1", "n": 2, "slices": 10, "tumor": 5, "train_slices": 45, "optimizer_steps": 300, **fig},
            {"head": "h2", "n": 1, "slices": 20, "tumor": 10, "train_slices": 35, "optimizer_steps": 300, **fig}]
    text = transfer_folds.markdown(rows, {"n": 2, **fig})
    assert "| h1 | 10 (5) | 2 | 0.700 ± 0.100 | 0.40 ± 0.00 | 9.0 ± 1.0 | 45 | 300 |" in text
    assert "| h2 | 20 (10) | 1 | 0.700 | 0.40 | 9.0 | 35 | 300 |" in text
    assert "| mean over 2 heads | | | 0.700 ± 0.100 |" in text
    assert all(line.count("|") == 9 for line in text.splitlines())


@pytest.mark.slow
def test_each_head_is_held_out_once_and_a_repeat_runs_nothing(tmp_path, capsys):
    data, out = pretrain_tiny(str(tmp_path))
    heads = write_tiny_dataset(str(tmp_path / "heads"), n_subjects=2, seed=1, prefix="head")  # never pre-trained on
    args = tiny_args(data, out, "--data", heads)
    rows, summary = transfer_folds.main(args)
    assert [r["head"] for r in rows] == ["head0", "head1"] and summary["n"] == 2
    saved = json.load(open(os.path.join(out, "transfer_folds.json")))
    for run in saved["runs"]:
        fold = [d for d in os.listdir(os.path.join(out, "transfer_folds")) if d.startswith(run["head"] + "_")][0]
        metrics = json.load(open(os.path.join(out, "transfer_folds", fold, "classification_metrics.json")))
        assert metrics["auroc"] == run["auroc"] and metrics["n_val_subjects"] == 1
        assert run["train_slices"] == 3  # the other head's slices
        ckpt = torch.load(os.path.join(out, "transfer_folds", fold, "best_tumor_classifier.pth"), weights_only=True)
        assert run["head"] not in ckpt["train_subjects"]
    assert "held out, seed 1:" in capsys.readouterr().out
    transfer_folds.main(args)
    assert "held out, seed 1:" not in capsys.readouterr().out

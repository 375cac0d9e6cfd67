import json
import os

import pytest
import torch

import train
from config import MiramError
from conftest import tiny_args


def test_train_end_to_end_then_resume_matches_uninterrupted(tiny_data, tmp_path):
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    train.main(tiny_args(tiny_data, out_a, "--n-epochs", "2"))
    for f in ("best_miram_mae.pth", "checkpoint.pth", "loss_curve.png", "train_log.jsonl"):
        assert os.path.getsize(os.path.join(out_a, f)) > 0
    # the same run in two pieces: 1 epoch, then restarted with the same command
    train.main(tiny_args(tiny_data, out_b, "--n-epochs", "2", "--stop-after", "1"))
    first = torch.load(os.path.join(out_b, "checkpoint.pth"), weights_only=True)
    assert first["epoch"] == 1
    train.main(tiny_args(tiny_data, out_b, "--n-epochs", "2"))
    a = torch.load(os.path.join(out_a, "checkpoint.pth"), weights_only=True)
    b = torch.load(os.path.join(out_b, "checkpoint.pth"), weights_only=True)
    assert b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log = [json.loads(line) for line in open(os.path.join(out_b, "train_log.jsonl"))]
    assert [r["epoch"] for r in log] == [1, 2]


def test_resume_with_other_config_is_refused(tiny_data, tmp_path):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    with pytest.raises(MiramError, match="another configuration.*DEPTH"):
        train.main(tiny_args(tiny_data, out, "--depth", "3"))


def test_missing_data_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        from records import run_cli
        run_cli(train.main, tiny_args(str(tmp_path / "none"), str(tmp_path / "o")))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Dataset empty") and "Traceback" not in err


def test_inpainting_fine_tune_end_to_end_then_resume_matches_uninterrupted(tiny_data, tmp_path):
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    train.main(tiny_args(tiny_data, out_a))
    for f in ("best_miram_mae.pth", "train_log.jsonl"):
        os.makedirs(out_b, exist_ok=True)
        with open(os.path.join(out_a, f), "rb") as src, open(os.path.join(out_b, f), "wb") as dst:
            dst.write(src.read())
    train.main(tiny_args(tiny_data, out_a, "--inpaint", "--inpaint-epochs", "2"))
    for f in ("best_miram_inpaint.pth", "inpaint_checkpoint.pth", "inpaint_log.jsonl"):
        assert os.path.getsize(os.path.join(out_a, f)) > 0
    train.main(tiny_args(tiny_data, out_b, "--inpaint", "--inpaint-epochs", "2", "--stop-after", "1"))
    train.main(tiny_args(tiny_data, out_b, "--inpaint", "--inpaint-epochs", "2"))
    a = torch.load(os.path.join(out_a, "inpaint_checkpoint.pth"), weights_only=True)
    b = torch.load(os.path.join(out_b, "inpaint_checkpoint.pth"), weights_only=True)
    assert a["kind"] == "inpaint" and b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    log = [json.loads(line) for line in open(os.path.join(out_b, "inpaint_log.jsonl"))]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["val_loss_biharmonic"] > 0 for r in log)
    # a fine-tune of another configuration's MAE is refused by name, not resumed
    out_c = str(tmp_path / "c")
    train.main(tiny_args(tiny_data, out_c, "--embed-dim", "64"))
    os.replace(os.path.join(out_b, "inpaint_checkpoint.pth"), os.path.join(out_c, "inpaint_checkpoint.pth"))
    with pytest.raises(MiramError, match="another configuration.*EMBED_DIM"):
        train.main(tiny_args(tiny_data, out_c, "--inpaint"))

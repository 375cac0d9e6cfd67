"""torchrun data parallelism on CPU (Gloo): both processes agree, and match one process with the same
global batch."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def run(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAM_")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def train_here(args):
    """train.py's main in this process, on one thread as the torchrun processes run (a process of its own would
    only add its start-up time)."""
    import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(args)
    finally:
        torch.set_num_threads(threads)


def test_two_process_gloo_matches_single_process(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=5, per_subject=4)  # 16 train / 4 val
    common = ["--preset", "tiny", "--dataset-path", data, "--n-epochs", "2", "--val-fraction", "0.2"]
    ddp_out, single_out = str(tmp_path / "ddp"), str(tmp_path / "single")
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
             *common, "--batch-size", "2", "--output-path", ddp_out])
    assert "2 processes hold identical weights" in r.stdout
    assert "effective_batch=4" in r.stdout and r.stdout.count("config:") == 1  # rank 0 alone speaks
    train_here([*common, "--batch-size", "4", "--output-path", single_out])
    a = torch.load(os.path.join(ddp_out, "checkpoint.pth"), weights_only=True)
    b = torch.load(os.path.join(single_out, "checkpoint.pth"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["world_size"] == 2
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4), k
    # resume works the same way under torchrun
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
             *[c if c != "2" else "3" for c in common], "--batch-size", "2", "--output-path", ddp_out])
    assert "resuming pretrain from" in r.stdout and "identical weights" in r.stdout


def test_inpainting_fine_tune_two_process_gloo_matches_single_process(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=5, per_subject=4)  # 16 train / 4 val
    common = ["--preset", "tiny", "--dataset-path", data, "--n-epochs", "1", "--val-fraction", "0.2"]
    mae_out = str(tmp_path / "mae")
    train_here([*common, "--batch-size", "4", "--output-path", mae_out])
    ddp_out, single_out = str(tmp_path / "ddp"), str(tmp_path / "single")
    for out in (ddp_out, single_out):
        os.makedirs(out)
        shutil.copy(os.path.join(mae_out, "best_miram_mae.pth"), out)
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
             "--inpaint", *common, "--batch-size", "2", "--output-path", ddp_out])
    assert "2 processes hold identical weights" in r.stdout and r.stdout.count("config:") == 1
    train_here(["--inpaint", *common, "--batch-size", "4", "--output-path", single_out])
    a = torch.load(os.path.join(ddp_out, "inpaint_checkpoint.pth"), weights_only=True)
    b = torch.load(os.path.join(single_out, "inpaint_checkpoint.pth"), weights_only=True)
    assert a["epoch"] == b["epoch"] and a["world_size"] == 2
    init = torch.load(os.path.join(mae_out, "best_miram_mae.pth"), weights_only=True)["model"]
    for k in a["model"]:
        start = init[k[4:]] if k.startswith("mae.") else torch.zeros_like(a["model"][k])  # the new parts start at 0
        # the same step as one process, far below what the step moved
        assert (a["model"][k] - b["model"][k]).abs().max() < 1e-6, k
        assert k.startswith(("mae.head_", "mae.mask_token")) or (b["model"][k] - start).abs().max() > 1e-5, k

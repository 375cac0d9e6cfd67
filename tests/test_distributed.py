"""torchrun data parallelism on CPU (Gloo): both processes agree, and match one process with the same
global batch."""
import os
import subprocess
import sys

import torch

from conftest import write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAM_")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_two_process_gloo_matches_single_process(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=5, per_subject=4)  # 16 train / 4 val
    common = ["--preset", "tiny", "--dataset-path", data, "--n-epochs", "2", "--val-fraction", "0.2"]
    ddp_out, single_out = str(tmp_path / "ddp"), str(tmp_path / "single")
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
             *common, "--batch-size", "2", "--output-path", ddp_out])
    assert "2 processes hold identical weights" in r.stdout
    assert "effective_batch=4" in r.stdout and r.stdout.count("config:") == 1  # rank 0 alone speaks
    run([sys.executable, "train.py", *common, "--batch-size", "4", "--output-path", single_out])
    a = torch.load(os.path.join(ddp_out, "checkpoint.pth"), weights_only=True)
    b = torch.load(os.path.join(single_out, "checkpoint.pth"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["world_size"] == 2
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4), k
    # resume works the same way under torchrun
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
             *[c if c != "2" else "3" for c in common], "--batch-size", "2", "--output-path", ddp_out])
    assert "resuming from" in r.stdout and "identical weights" in r.stdout

"""bench/gpu_check.py's CPU-checkable parts, so the GPU check cannot rot between the GPUs it meets."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import gpu_check  # noqa: E402


def test_without_cuda_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0]


@pytest.mark.parametrize("flag", ["--steps", "--loss-steps", "--epochs", "--max-batch", "--budget"])
def test_bad_arguments_are_refused_naming_the_flag(flag):
    with pytest.raises(SystemExit, match=flag):
        gpu_check.main([flag, "0"])


def test_loss_tolerance():
    cpu = [0.30, 0.25, 0.20]
    assert gpu_check.losses_agree(cpu, [0.301, 0.2505, 0.2019], 0.02) == (True, pytest.approx(0.0095))
    assert gpu_check.losses_agree(cpu, [0.30, 0.25, 0.206], 0.02)[0] is False  # 3% off on the last step
    assert gpu_check.losses_agree(cpu, cpu[:2], 0.02)[0] is False  # a step missing is no agreement
    assert gpu_check.losses_agree([], [], 0.02)[0] is False


def test_table_and_exit_status_with_stubbed_checks(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Stub GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(gpu_check, "check_step", lambda a, d, n: [gpu_check.row("step", True, "1.50x")])
    monkeypatch.setattr(gpu_check, "check_real_run", lambda a, o: [gpu_check.row("run train.py", False, "exit 1")])
    monkeypatch.setattr(gpu_check, "check_torchrun", lambda a, o: 1 / 0)  # a crash is a FAIL row, not an abort
    monkeypatch.setattr(gpu_check, "check_onnx_cuda", lambda a, o: [gpu_check.row("onnx-cuda", None, "no provider")])
    monkeypatch.setattr(gpu_check, "check_memory", lambda a, d: [gpu_check.row("memory", True, "2 GiB")])
    path = str(tmp_path / "gpu.json")
    assert gpu_check.main(["--json", path]) == 1
    table = capsys.readouterr().out.split("\nStub GPU, ")[-1]
    lines = table.splitlines()[1:]
    assert lines[0].split() == ["check", "status", "figures"]
    statuses = {line.split("  ")[0].strip(): line for line in lines[2:]}
    assert "FAIL" in statuses["run train.py"] and "FAIL" in statuses["torchrun"] and "ZeroDivisionError" in statuses["torchrun"]
    assert "skipped" in statuses["onnx-cuda"] and " ok " in statuses["memory"]
    saved = json.load(open(path))
    assert saved["gpu"] == "Stub GPU" and [r["status"] for r in saved["rows"]] == ["ok", "FAIL", "FAIL", "skipped", "ok"]


def test_checks_past_the_budget_are_skipped_not_run(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Stub GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    clock = iter(range(0, 10000, 100))
    monkeypatch.setattr(gpu_check.time, "time", lambda: next(clock))
    ran = []
    for name in ("check_step", "check_real_run", "check_torchrun", "check_onnx_cuda", "check_memory"):
        monkeypatch.setattr(gpu_check, name, lambda *a, n=name: ran.append(n) or [gpu_check.row(n, True, "")])
    assert gpu_check.main(["--budget", "250"]) == 0
    assert ran == ["check_step", "check_real_run"]  # each check here "takes" 100 s
    assert capsys.readouterr().out.count("past the 250s budget") == 3


def test_the_step_it_times_trains_on_the_cpu_too():
    from config import ModelConfig
    from models import MIRAM
    torch.manual_seed(0)
    m = MIRAM(ModelConfig(img_size=32, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                          decoder_num_heads=2)).train()
    step = gpu_check.make_step(m, "miram", None, torch.device("cpu"))
    x, noise = torch.rand(2, 1, 32, 32), torch.rand(2, 4)
    losses = [step(x, noise)[1] for _ in range(4)]
    assert losses[-1] < losses[0]  # the same batch, fitted step by step

"""The GPU path in five minutes: run it whenever a CUDA machine is at hand, and read one table.

    python bench/gpu_check.py [--steps 20] [--epochs 3] [--budget 300] [--json PATH]      (make gpu-check)

Checks, each a row of the table (status ok / FAIL / skipped, with its figures):
  step        pre-training steps at the spec's sizes, bf16 autocast (fp16 + gradient scaler where the GPU
              has no bf16): images/s against HuggingFace ViTMAEForPreTraining at the same sizes on the same
              GPU, interleaved; and the first steps' losses against the same steps in fp32 on the CPU
  run         train.py for a few epochs of the demo preset on the GPU, then classify.py and evaluate.py,
              each exit 0; the checkpoint then loads and runs on the CPU
  torchrun    train.py under torchrun --nproc_per_node=<GPUs> with NCCL; identical weights on every rank
  onnx-cuda   ONNX Runtime's CUDA execution provider: parity with PyTorch and batch 1 / 16 latency of the
              spec classifier (skipped, saying why, where the installed onnxruntime lacks the provider)
  memory      peak GPU memory of a training step at batch 16, and the largest batch that fits
Without CUDA it says so in one line and exits 0. Exit 1 when any check fails.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# bf16 keeps 8 bits of mantissa: over the first steps from one initialisation, the GPU's bf16 losses stay
# within this relative distance of the CPU's fp32 ones (fp16 with its scaler, closer).
LOSS_RTOL = {"bf16": 0.02, "fp16": 0.01}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps per model (after 3 warm-up)")
    p.add_argument("--loss-steps", type=int, default=5, help="first steps whose losses are compared with the CPU's")
    p.add_argument("--epochs", type=int, default=3, help="demo-preset epochs of the short real run")
    p.add_argument("--budget", type=float, default=300, help="seconds: later checks are skipped past it")
    p.add_argument("--max-batch", type=int, default=1024, help="largest batch tried in the memory check")
    p.add_argument("--json", default=None, help="also write the table here")
    return p


def check_args(args):
    for name in ("steps", "loss_steps", "epochs", "max_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.budget <= 0:
        raise SystemExit(f"error: --budget must be > 0 seconds, got {args.budget}")


def losses_agree(cpu, gpu, rtol):
    """(agree, worst relative difference) of two loss sequences of the same steps."""
    if len(cpu) != len(gpu) or not cpu:
        return False, float("inf")
    worst = max(abs(g - c) / max(abs(c), 1e-12) for c, g in zip(cpu, gpu))
    return worst <= rtol, worst


def format_table(rows):
    """rows: {"check", "status", "figures"} dicts -> the printed table."""
    width = max([len("check")] + [len(r["check"]) for r in rows])
    lines = [f"{'check':{width}s}  {'status':8s}  figures", f"{'-' * width}  {'-' * 8}  {'-' * 40}"]
    lines += [f"{r['check']:{width}s}  {r['status']:8s}  {r['figures']}" for r in rows]
    return "\n".join(lines)


def row(check, ok, figures):
    return {"check": check, "status": "skipped" if ok is None else ("ok" if ok else "FAIL"), "figures": figures}


# ---- the checks (CUDA only) --------------------------------------------------------------------------

def spec_batch(batch, device, seed=0):
    import torch
    from config import ModelConfig
    spec = ModelConfig()
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(batch, spec.in_chans, spec.img_size, spec.img_size, generator=g)
    return imgs.to(device), torch.rand(batch, spec.num_patches, generator=g).to(device)


def make_step(model, kind, dtype, device):
    """One training step on a fixed batch -> (seconds, loss): MIRAM with engine.fit's optimizer (fused AdamW,
    weight-decay groups), HuggingFace with the AdamW a user would write; autocast in dtype (None: fp32) and a
    gradient scaler in fp16, as engine.fit steps."""
    import torch
    from engine import make_optimizer, param_groups
    opt = (make_optimizer(param_groups(model, 0.05), 1.5e-4, (0.9, 0.95)) if kind == "miram" else
           torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), fused=True))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(imgs, noise):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(pixel_values=imgs, noise=noise).loss if kind == "hf" else model(imgs, noise).loss
        scaler.scale(loss.float()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0, loss.item()
    return step


def check_step(args, device, dtype_name):
    import statistics

    import torch
    from config import ModelConfig
    from hardware import tune_for
    from models import MIRAM
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    imgs, noise = spec_batch(16, device)
    torch.manual_seed(0)
    cpu_model = MIRAM(ModelConfig())
    gpu_model = tune_for(MIRAM(ModelConfig()), device, True).to(device)
    gpu_model.load_state_dict(cpu_model.state_dict())
    steppers = {"miram": make_step(gpu_model.train(), "miram", dtype, device)}
    cpu_step = make_step(cpu_model.train(), "miram", None, torch.device("cpu"))
    cpu_losses = [cpu_step(imgs.cpu(), noise.cpu())[1] for _ in range(args.loss_steps)]
    gpu_losses = [steppers["miram"](imgs, noise)[1] for _ in range(args.loss_steps)]
    agree, worst = losses_agree(cpu_losses, gpu_losses, LOSS_RTOL[dtype_name])
    rows = [row(f"step loss vs CPU fp32 ({dtype_name})", agree,
                f"{args.loss_steps} steps, worst relative difference {worst:.4f} (limit {LOSS_RTOL[dtype_name]})")]
    try:
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        from train_throughput import hf_model
        steppers["hf"] = make_step(hf_model().to(device).train(), "hf", dtype, device)
    except ImportError:
        pass
    for _ in range(3):
        for step in steppers.values():
            step(imgs, noise)
    times = {k: [] for k in steppers}
    for _ in range(args.steps):  # interleaved: one step each per round
        for k, step in steppers.items():
            times[k].append(step(imgs, noise)[0])
    speed = {k: 16 / statistics.median(v) for k, v in times.items()}
    if "hf" not in speed:
        rows.append(row(f"step images/s ({dtype_name})", None,
                        f"MIRAM {speed['miram']:.0f}/s; HF ViTMAE not installed (pip install -r bench/requirements.txt)"))
    else:
        rows.append(row(f"step images/s ({dtype_name})", speed["miram"] >= speed["hf"],
                        f"MIRAM {speed['miram']:.0f}/s vs HF ViTMAE {speed['hf']:.0f}/s = {speed['miram'] / speed['hf']:.2f}x"))
    return rows


def run(cmd, env=None, timeout=240):
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


def check_real_run(args, out):
    import torch
    env = {"MIRAM_PRESET": "demo", "MIRAM_OUTPUT_PATH": out, "MIRAM_DEVICE": "cuda"}
    rows = []
    for name, cmd in (("train.py", ["train.py", "--n-epochs", str(args.epochs)]),
                      ("classify.py", ["classify.py", "--cls-epochs", "2", "--n-viz", "1"]),
                      ("evaluate.py", ["evaluate.py", "--n-samples", "1"])):
        r, seconds = run([sys.executable, *cmd], env)
        last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or [""]
        rows.append(row(f"run {name} (demo preset, GPU)", r.returncode == 0,
                        f"exit {r.returncode} in {seconds:.0f}s" + ("" if r.returncode == 0 else f": {last[0][:120]}")))
        if r.returncode:
            return rows
    from checkpoint import build_from_checkpoint
    from config import ARTIFACTS
    model, _ = build_from_checkpoint(os.path.join(out, ARTIFACTS["mae"]), "mae", map_location="cpu")
    imgs, noise = spec_batch(2, torch.device("cpu"))
    imgs = imgs[..., :model.cfg.img_size, :model.cfg.img_size]
    with torch.no_grad():
        loss = model.eval()(imgs, noise[:, :model.cfg.num_patches]).loss.item()
    rows.append(row("GPU checkpoint on the CPU", bool(loss == loss), f"loads with weights_only=True, loss {loss:.4f}"))
    return rows


def check_torchrun(args, out):
    import torch
    n = torch.cuda.device_count()
    r, seconds = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                      "train.py", "--n-epochs", "1"], {"MIRAM_PRESET": "demo", "MIRAM_OUTPUT_PATH": out})
    same = "identical weights" in r.stdout or n == 1
    return [row(f"torchrun NCCL x{n}", r.returncode == 0 and same, f"exit {r.returncode} in {seconds:.0f}s"
                + (", weights identical on every rank" if n > 1 and same else ""))]


def check_onnx_cuda(args, out):
    import onnxruntime as ort
    import torch
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return [row("onnx-cuda", None, "the installed onnxruntime has no CUDAExecutionProvider "
                                        "(install onnxruntime-gpu in its own environment to check it)")]
    from onnx_export import classifier_outputs, export_all, spec_models
    from runtime import OnnxClassifier, bench_group, benchmark_batches, compare, cycle
    clf, _ = spec_models()
    imgs, _ = spec_batch(16, torch.device("cpu"))
    paths = export_all(out, "gpu_", clf, None, imgs[:2], None)["classifier"]
    runner = OnnxClassifier(paths["ort-fp32"], device="cuda")
    with torch.no_grad():
        ref = classifier_outputs(clf, imgs, *clf.foreground(imgs))[0].numpy()
    prob, _ = runner(imgs.numpy())
    parity = compare(ref, prob)
    rows = [row("onnx-cuda parity", parity["max_abs"] <= 1e-3, f"probability max-abs {parity['max_abs']:.1e} "
                f"(providers {', '.join(runner.providers)})")]
    for batch in (1, 16):
        inputs = benchmark_batches(imgs.numpy(), batch, clf.encoder.grid, 20)
        t = bench_group({"ort-cuda": cycle(lambda x, n: runner(x), inputs)}, batch, 20, 3)["ort-cuda"]
        rows.append(row(f"onnx-cuda batch {batch}", True,
                        f"p50 {t['p50_ms']:.2f} ms, {t['images_per_s']:.0f} images/s"))
    return rows


def check_memory(args, device):
    import torch
    from config import ModelConfig
    from hardware import amp_dtype, tune_for
    from models import MIRAM
    model = tune_for(MIRAM(ModelConfig()), device, True).to(device).train()
    dtype = amp_dtype(device)

    def peak(batch):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        imgs, noise = spec_batch(batch, device)
        with torch.autocast("cuda", dtype=dtype):
            loss = model(imgs, noise).loss
        loss.float().backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device)

    at16 = peak(16)
    fits, batch = 16, 32
    while batch <= args.max_batch:
        try:
            peak(batch)
            fits, batch = batch, batch * 2
        except torch.cuda.OutOfMemoryError:
            break
    return [row("memory", True, f"peak {at16 / 2**30:.2f} GiB at batch 16; largest batch that fits "
                                f"{'>= ' if batch > args.max_batch else ''}{fits} (tried up to {args.max_batch})")]


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    check_args(args)
    import torch
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing to check (run it on a machine with a GPU)")
        return 0
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    dtype_name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(f"gpu-check on {torch.cuda.device_count()} x {name}, torch {torch.__version__}, training in {dtype_name}", flush=True)
    start, rows = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        checks = [("step", lambda: check_step(args, device, dtype_name)),
                  ("run", lambda: check_real_run(args, os.path.join(tmp, "run"))),
                  ("torchrun", lambda: check_torchrun(args, os.path.join(tmp, "ddp"))),
                  ("onnx-cuda", lambda: check_onnx_cuda(args, tmp)),
                  ("memory", lambda: check_memory(args, device))]
        for check, fn in checks:
            if time.time() - start > args.budget:
                rows.append(row(check, None, f"past the {args.budget:.0f}s budget"))
                continue
            try:
                rows += fn()
            except Exception as e:  # one failing check must not hide the others' results
                rows.append(row(check, False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{name}, {time.time() - start:.0f}s\n" + format_table(rows))
    if args.json:
        from records import save_json
        save_json(args.json, {"gpu": name, "count": torch.cuda.device_count(), "dtype": dtype_name, "rows": rows,
                              "seconds": time.time() - start})
    return 1 if any(r["status"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

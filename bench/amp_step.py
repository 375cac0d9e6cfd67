"""What bf16 autocast costs or saves per training step on this CPU, against fp32, in one process.

    MIRAM_PRESET=demo python bench/amp_step.py [--steps 5] [--batch 16] [--threads 2]

The configured MAE (the demo preset: the model `make demo` trains), one step of train.py's AdamW on a batch
of random slices, fp32 and bf16 autocast alternating step by step (train_throughput.time_steps, after one
untimed round) so drift on a shared machine hits both alike. Prints each step's seconds, the bf16/fp32 ratio of the medians, and
whether PyTorch sees native bf16 (hardware.native_amp): where it does not, train.py runs fp32 even with AMP on.
With --compile, also torch.compile'd copies (inductor, which needs a C++ compiler): the first step, which
compiles, is timed apart, and the steps a run must take before compiling pays for itself are printed.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from hardware import native_amp, tune_for  # noqa: E402
from models import MIRAM  # noqa: E402
from train_throughput import make_step, time_steps  # noqa: E402  (bench/ is this script's folder)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps and their compile time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, cpu = load_config(), torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(args.batch, cfg.IN_CHANS, cfg.IMG_SIZE, cfg.IMG_SIZE, generator=g)
    noise = torch.rand(args.batch, (cfg.IMG_SIZE // cfg.PATCH_SIZE) ** 2, generator=g)
    def model_as_trained(amp):
        torch.manual_seed(0)  # as train.py builds and steps it
        return tune_for(MIRAM(cfg.model_config()), cpu, amp).train()

    steps, compile_s = {}, {}
    for name, amp in (("fp32", False), ("bf16", True)):
        steps[name] = make_step(model_as_trained(amp), "miram", amp, True)
        if args.compile and (not amp or native_amp(cpu)):
            compiled = make_step(torch.compile(model_as_trained(amp)), "miram", amp, True)
            t0 = time.perf_counter()
            compiled(imgs, noise)
            compile_s[name] = time.perf_counter() - t0
            steps[name + " compiled"] = compiled
    times = time_steps(steps, imgs, noise, args.steps, 1)
    for name, t in times.items():
        print(f"{name} step s: {[round(x, 3) for x in t]}")
    median = {name: statistics.median(t) for name, t in times.items()}
    fp32, bf16 = median["fp32"], median["bf16"]
    print(f"{cfg.EMBED_DIM}-dim/{cfg.DEPTH}-block MAE, batch {args.batch}, {args.threads} threads: bf16 autocast "
          f"{bf16:.3f} s vs fp32 {fp32:.3f} s per step = {bf16 / fp32:.2f}x; native bf16 here: {native_amp(cpu)}")
    for name, seconds in compile_s.items():
        eager, compiled = median[name], median[name + " compiled"]
        pays_after = (f"pays for itself after {seconds / (eager - compiled):.0f} steps" if compiled < eager
                      else "never pays for itself")
        print(f"{name} torch.compile: first step {seconds:.1f} s, then {compiled:.3f} s vs {eager:.3f} s eager "
              f"= {eager / compiled:.2f}x faster; {pays_after}")


if __name__ == "__main__":
    main()

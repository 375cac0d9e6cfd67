"""What train.py's allocator policy (hardware.keep_freed_memory) is worth: the same training steps in child
processes, alternately with glibc's malloc as it is and keeping freed memory.

    python bench/allocator.py [--pairs 3] [--steps 8] [--batch 16] [--threads 2] [--json PATH]

One process holds one allocator policy, so the two cannot be interleaved step by step in one process as
train_throughput.py does its candidates; child processes alternate instead (system, kept, system, kept...),
each timing --steps steps, after 3 untimed ones, of what train.py runs (tune_for, its AdamW) on random
slices: the spec's MAE in fp32 and, where the CPU has native bf16, in bf16, and the demo preset's MAE as
`make demo` trains it. Prints each policy's median images/s over its processes, the ratio, and the peak
resident memory of the children (model, optimizer and steps).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import ModelConfig, load_config  # noqa: E402
from hardware import keep_freed_memory, resolve_amp, tune_for  # noqa: E402
from models import MIRAM  # noqa: E402
from records import run_info, save_json  # noqa: E402
from train_throughput import make_step  # noqa: E402  (bench/ is this script's folder)

POLICIES = ("system", "kept")


def model_config(name):
    return ModelConfig() if name == "spec" else load_config(environ={"MIRAM_PRESET": "demo"}).model_config()


def child(policy, model_name, amp, steps, batch, threads):
    """One process: `steps` timed training steps under one allocator policy -> images/s, peak memory."""
    torch.set_num_threads(threads)
    if policy == "kept" and not keep_freed_memory():
        raise SystemExit("this C library has no mallopt (not glibc): nothing to compare")
    cfg = model_config(model_name)
    torch.manual_seed(0)
    step = make_step(tune_for(MIRAM(cfg), torch.device("cpu"), amp).train(), "miram", amp, True)
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)
    noise = torch.rand(batch, cfg.num_patches, generator=g)
    times = []
    for i in range(3 + steps):
        t0 = time.perf_counter()
        step(imgs, noise)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return {"img_s": batch / statistics.median(times),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cases():
    cpu = torch.device("cpu")
    out = [("spec", False)]
    if resolve_amp(cpu, True, lambda *a: None, ModelConfig().embed_dim):  # False without native bf16
        out.append(("spec", True))
    demo_amp = resolve_amp(cpu, True, lambda *a: None, model_config("demo").embed_dim)
    return out + [("demo", demo_amp)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3, help="child processes per policy and case")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--child", nargs=3, metavar=("POLICY", "MODEL", "AMP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        policy, model_name, amp = args.child
        print(json.dumps(child(policy, model_name, amp == "1", args.steps, args.batch, args.threads)))
        return None
    rows = []
    for model_name, amp in cases():
        runs = {policy: [] for policy in POLICIES}
        for _ in range(args.pairs):
            for policy in POLICIES:
                cmd = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps), "--batch",
                       str(args.batch), "--threads", str(args.threads), "--child", policy, model_name, str(int(amp))]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"bench/allocator.py: a child process failed: {done.stderr.strip()[-500:]}")
                runs[policy].append(json.loads(done.stdout.strip().splitlines()[-1]))
        row = {"model": model_name, "precision": "bf16" if amp else "fp32", "batch": args.batch}
        for policy in POLICIES:
            row[policy] = {"img_s": statistics.median(r["img_s"] for r in runs[policy]),
                           "peak_mb": statistics.median(r["peak_mb"] for r in runs[policy]),
                           "img_s_each": [round(r["img_s"], 2) for r in runs[policy]]}
        row["speedup"] = row["kept"]["img_s"] / row["system"]["img_s"]
        rows.append(row)
        print(f"{model_name} {row['precision']}, batch {args.batch}: system {row['system']['img_s']:.1f} images/s "
              f"({row['system']['peak_mb']:.0f} MB peak), kept {row['kept']['img_s']:.1f} "
              f"({row['kept']['peak_mb']:.0f} MB): {row['speedup']:.2f}x", flush=True)
    out = {"rows": rows, "pairs": args.pairs, "steps": args.steps, "threads": args.threads, "run": run_info()}
    if args.json:
        save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

"""What bf16 autocast costs or saves per training step on this CPU, against fp32, in one process.

    MIRAM_PRESET=demo python bench/amp_step.py [--steps 5] [--batch 16] [--threads 2]

The configured MAE (the demo preset: the model `make demo` trains), one AdamW step on a batch of random
slices, fp32 and bf16 autocast alternating step by step (after one untimed step each) so drift on a
shared machine hits both alike. Prints each step's seconds, the bf16/fp32 ratio of the medians, and
whether PyTorch sees native bf16 (models.native_amp): where it does not, train.py runs fp32 even with AMP on.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from models import MIRAM, autocast, native_amp, tune_for  # noqa: E402
from train import make_optimizer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, cpu = load_config(), torch.device("cpu")
    x = torch.rand(args.batch, cfg.IN_CHANS, cfg.IMG_SIZE, cfg.IMG_SIZE, generator=torch.Generator().manual_seed(0))
    steps = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = tune_for(MIRAM(cfg.model_config()), cpu, amp).train()  # as train.py builds it
        steps[amp] = (model, make_optimizer(model, 1e-4, 0.05))
    times = {False: [], True: []}
    for i in range(args.steps + 1):
        for amp, (model, opt) in steps.items():
            t0 = time.perf_counter()
            with autocast(cpu, amp):
                loss = model(x).loss.float()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first step of each is warm-up
                times[amp].append(time.perf_counter() - t0)
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"fp32 step s: {[round(t, 3) for t in times[False]]}\nbf16 step s: {[round(t, 3) for t in times[True]]}")
    print(f"{cfg.EMBED_DIM}-dim/{cfg.DEPTH}-block MAE, batch {args.batch}, {args.threads} threads: bf16 autocast "
          f"{bf16:.3f} s vs fp32 {fp32:.3f} s per step = {bf16 / fp32:.2f}x; native bf16 here: {native_amp(cpu)}")


if __name__ == "__main__":
    main()

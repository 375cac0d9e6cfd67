"""Batch-1 latency of the spec-size tumor classifier, repeated in rounds, so machine drift shows as spread.

    MIRAM_PRESET=demo python bench/classifier_latency.py [--rounds 5] [--iters 50] [--threads 2]

export_deploy.py times each backend once per run; on a shared 2-core machine one run can land in a slow
minute. This exports the spec-size classifier (384/12/6, untrained weights: timing only) exactly as
export_deploy.py does, then times PyTorch eager fp32 and ONNX Runtime fp32 and int8 in alternating turns (runtime.bench_group) on the same
sequence of validation slices (their foreground patches, as deployed), `--rounds` times, and prints each
round's medians and the ratio ORT fp32 / eager within the round, then the median over the rounds.
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import onnx_export as ox  # noqa: E402
import runtime  # noqa: E402
from common import spec_bench_setup  # noqa: E402
from imaging import foreground_patches  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=50, help="timed calls per backend and round (50: every demo validation slice)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    clf, _, val = spec_bench_setup(args.threads)
    spec = clf.cfg
    images = val.images.numpy()
    grid = spec.img_size // spec.patch_size
    inputs = runtime.benchmark_batches(images, 1, grid, args.iters)
    patches = np.mean([foreground_patches(x, spec.patch_size, spec.foreground_threshold)[1].sum() for x, _ in inputs])
    with tempfile.TemporaryDirectory() as d:
        paths = ox.export_all(d, "spec_", clf, None, torch.from_numpy(images[:2]), None)["classifier"]
        rows = []
        for r in range(args.rounds):
            runners = ox.model_runners("classifier", clf, paths, inputs, args.threads)
            runners.pop("torch-bf16", None)
            res = runtime.bench_group(runners, 1, args.iters, 5)
            row = {k: v["p50_ms"] for k, v in res.items()}
            row["ratio"] = row["ort-fp32"] / row["torch-fp32"]
            rows.append(row)
            print(f"round {r + 1}: eager fp32 {row['torch-fp32']:.2f} ms, ORT fp32 {row['ort-fp32']:.2f} ms "
                  f"({row['ratio']:.3f}x), ORT int8 {row['ort-int8']:.2f} ms", flush=True)
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    print(f"spec classifier, batch 1, {args.threads} threads, {patches:.1f} patches per slice on average; "
          f"median of {args.rounds} rounds: eager fp32 {med['torch-fp32']:.2f} ms, ORT fp32 {med['ort-fp32']:.2f} ms "
          f"({med['ratio']:.3f}x eager; rounds {min(r['ratio'] for r in rows):.3f}-{max(r['ratio'] for r in rows):.3f}), "
          f"ORT int8 {med['ort-int8']:.2f} ms (rounds {min(r['ort-int8'] for r in rows):.2f}-"
          f"{max(r['ort-int8'] for r in rows):.2f})")


if __name__ == "__main__":
    main()

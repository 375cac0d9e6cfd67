"""Training throughput of MIRAM against HuggingFace's ViTMAEForPreTraining at the same sizes, in one process.

    python bench/train_throughput.py [--steps 10] [--warmup 3] [--batch 16] [--threads 2] [--curve-steps 30]

Both models: 1 channel, 224x224, patch 16, encoder 384/12/6, decoder 256/4/8, mask 0.75, AdamW, batch 16.
Candidates are timed interleaved (round-robin, one step each per round) so drift on a shared machine hits
all of them alike. Prints images/s (median and best) and the ratio to HuggingFace fp32, then checks that
the fast paths leave the loss curve unchanged: the same seeds and batches trained with and without them.
The process runs under train.py's allocator policy (hardware.keep_freed_memory), which one process cannot
hold for some candidates and not others: HuggingFace gains from it too; bench/allocator.py measures what
the policy is worth, in paired processes.
Needs `pip install -r bench/requirements.txt` (transformers).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import ModelConfig  # noqa: E402
from engine import make_optimizer, param_groups  # noqa: E402
from hardware import (ONEDNN_LINEAR, keep_freed_memory, matmul_gflops, native_amp, training_gflop_per_image,  # noqa: E402
                      tune_for, use_fast_linear)
from models import MIRAM  # noqa: E402
from records import run_info, save_json  # noqa: E402

SPEC = ModelConfig()
CPU = torch.device("cpu")


def hf_model():
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    c = ViTMAEConfig(image_size=SPEC.img_size, patch_size=SPEC.patch_size, num_channels=SPEC.in_chans,
                     hidden_size=SPEC.embed_dim, num_hidden_layers=SPEC.depth, num_attention_heads=SPEC.num_heads,
                     intermediate_size=int(SPEC.embed_dim * SPEC.mlp_ratio), qkv_bias=True,
                     decoder_hidden_size=SPEC.decoder_embed_dim, decoder_num_hidden_layers=SPEC.decoder_depth,
                     decoder_num_attention_heads=SPEC.decoder_num_heads,
                     decoder_intermediate_size=int(SPEC.decoder_embed_dim * SPEC.mlp_ratio),
                     mask_ratio=SPEC.mask_ratio, norm_pix_loss=False, attn_implementation="sdpa")
    return ViTMAEForPreTraining(c)


def make_step(model, kind, amp, train_py_optimizer=False):
    # HuggingFace gets the AdamW a user would write; MIRAM's train.py candidates get train.py's own (fused).
    opt = (make_optimizer(param_groups(model, 0.05), 1.5e-4, (0.9, 0.95)) if train_py_optimizer else
           torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05))

    def step(imgs, noise):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if kind == "hf":
                loss = model(pixel_values=imgs, noise=noise).loss
            else:
                loss = model(imgs, noise).loss
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def candidates():
    torch.manual_seed(0)
    out = {
        "hf-fp32": make_step(hf_model().train(), "hf", False),
        "hf-bf16": make_step(hf_model().train(), "hf", True),
        "miram-fp32 (F.linear)": make_step(use_fast_linear(MIRAM(SPEC), False).train(), "miram", False),
        "miram-bf16 (fused SDPA)": make_step(MIRAM(SPEC).train(), "miram", True),
        # what train.py runs: tune_for(model, cpu, amp)
        "miram-fp32 (train.py)": make_step(tune_for(MIRAM(SPEC), CPU, False).train(), "miram", False, True),
        "miram-bf16 (train.py)": make_step(tune_for(MIRAM(SPEC), CPU, True).train(), "miram", True, True),
    }
    if not native_amp(CPU):  # emulated bf16: many times slower, and train.py would not use it here
        out = {k: v for k, v in out.items() if "bf16" not in k}
    return out


def time_steps(cands, imgs, noise, steps, warmup):
    """Seconds of each candidate's training steps, round-robin (one step each per round) after `warmup`
    untimed rounds, so drift on a shared machine hits all alike."""
    times = {k: [] for k in cands}
    for r in range(warmup + steps):
        for name, step in cands.items():
            t0 = time.perf_counter()
            step(imgs, noise)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def throughput(steps, warmup, batch):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(batch, SPEC.in_chans, SPEC.img_size, SPEC.img_size, generator=g)
    noise = torch.rand(batch, (SPEC.img_size // SPEC.patch_size) ** 2, generator=g)
    times = time_steps(candidates(), imgs, noise, steps, warmup)
    return {k: {"median_img_s": batch / statistics.median(v), "best_img_s": batch / min(v)} for k, v in times.items()}


def loss_curve(steps, batch, fast, amp):
    """Losses of `steps` training steps on fixed random batches, from one fixed initialisation."""
    torch.manual_seed(0)
    model = MIRAM(SPEC)
    model = (tune_for(model, CPU, amp) if fast else use_fast_linear(model, False)).train()
    step = make_step(model, "miram", amp, train_py_optimizer=fast)
    g = torch.Generator().manual_seed(1)
    # Smooth random images: a learnable signal, so the curve actually falls.
    base = torch.nn.functional.interpolate(torch.rand(steps * batch, 1, 14, 14, generator=g), size=SPEC.img_size,
                                           mode="bilinear", align_corners=False)
    noise = torch.rand(steps * batch, (SPEC.img_size // SPEC.patch_size) ** 2, generator=g)
    return [step(base[i * batch:(i + 1) * batch], noise[i * batch:(i + 1) * batch]) for i in range(steps)]


def loader_throughput(batch, reps=20):
    """Images/s of the data path: decoding + normalising + resizing files once (the in-memory cache), and
    assembling + augmenting a batch every step (what each training step pays)."""
    from config import load_config
    from augment import apply_augment, augment_params
    from dataset import load_slices, resolve_data_path
    cfg = load_config(environ={})
    root = resolve_data_path(cfg, quiet=True)
    t0 = time.perf_counter()
    data = load_slices(root, SPEC.img_size, cfg.SUBJECT_PATTERN, quiet=True)
    decode = len(data) / (time.perf_counter() - t0)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        idx = torch.randperm(len(data), generator=g)[:batch]
        apply_augment(data.images[idx], augment_params(batch, g))
        times.append(time.perf_counter() - t0)
    return {"decode_images_per_s": decode, "batch_images_per_s": batch / statistics.median(times),
            "n_images": len(data)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--curve-steps", type=int, default=30, help="0 skips the loss-curve check")
    p.add_argument("--json", default=None, help="also write the results here (make bench: outputs/train_throughput.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = "freed memory kept (glibc)" if keep_freed_memory() else "the system's"
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, allocator: {allocator}, "
          f"oneDNN linear {'available' if ONEDNN_LINEAR else 'MISSING (fallback)'}, native bf16 "
          f"{'yes' if native_amp(CPU) else 'no: bf16 candidates left out (bench/amp_step.py shows why)'}")
    res = throughput(args.steps, args.warmup, args.batch)
    ref = res["hf-fp32"]["median_img_s"]
    gflop, peak = training_gflop_per_image(MIRAM(SPEC).train(), CPU), matmul_gflops(args.threads)
    bf16_peak = matmul_gflops(args.threads, dtype=torch.bfloat16) if native_amp(CPU) else None
    print(f"a training step: {gflop:.1f} GFLOP per image; matrix multiply here: fp32 {peak:.0f} GFLOP/s"
          + (f", bf16 {bf16_peak:.0f} GFLOP/s" if bf16_peak else ""))
    print(f"{'candidate':28s} {'img/s median':>12s} {'img/s best':>10s} {'vs HF fp32':>10s} {'fp32 peak':>9s}"
          f" {'bf16 peak':>9s}")
    for name, r in res.items():
        r["ratio_vs_hf_fp32"] = r["median_img_s"] / ref
        r["share_of_fp32_matmul_peak"] = gflop * r["median_img_s"] / peak
        if bf16_peak and "bf16" in name:
            r["share_of_bf16_matmul_peak"] = gflop * r["median_img_s"] / bf16_peak
        print(f"{name:28s} {r['median_img_s']:12.1f} {r['best_img_s']:10.1f} {r['ratio_vs_hf_fp32']:9.2f}x "
              f"{r['share_of_fp32_matmul_peak']:8.0%} "
              + (f"{r['share_of_bf16_matmul_peak']:8.0%}" if "share_of_bf16_matmul_peak" in r else f"{'':>8s}"))
    # The most any candidate could reach against HuggingFace fp32 if every FLOP of its step ran at the large
    # matrix multiply's rate: a ratio goal above it cannot be met on this machine by faster kernels.
    ceiling = {"fp32": peak / (gflop * ref)}
    if bf16_peak:
        ceiling["bf16"] = bf16_peak / (gflop * ref)
    print("ceiling vs HF fp32 at the matrix-multiply rate: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ceiling.items()))
    out = {"threads": args.threads, "batch": args.batch, "allocator": allocator, "gflop_per_image": gflop,
           "matmul_gflops": peak, "bf16_matmul_gflops": bf16_peak, "ceiling_vs_hf_fp32": ceiling,
           "throughput": res, "run": run_info()}
    loader = loader_throughput(args.batch)
    out["loader"] = loader
    best = max(r["median_img_s"] for r in res.values())
    print(f"data loader: decode+normalise+resize {loader['decode_images_per_s']:.0f} images/s (once, into memory; "
          f"{loader['n_images']} demo slices), batch assembly+augmentation {loader['batch_images_per_s']:.0f} images/s "
          f"per step: {loader['batch_images_per_s'] / best:.0f}x the fastest training rate above")
    if args.curve_steps:
        plain = loss_curve(args.curve_steps, args.batch, fast=False, amp=False)
        curves = {"train.py fp32": loss_curve(args.curve_steps, args.batch, fast=True, amp=False)}
        if native_amp(CPU):  # emulated bf16 is many times slower, and train.py would not use it
            curves["train.py bf16"] = loss_curve(args.curve_steps, args.batch, fast=True, amp=True)
        out["loss_curve"] = {"plain_fp32": plain}
        for name, c in curves.items():
            rel = max(abs(a - b) / abs(b) for a, b in zip(c, plain))
            print(f"loss curve, {name} vs plain fp32 over {args.curve_steps} steps: first {plain[0]:.4f} -> last "
                  f"{plain[-1]:.4f} (plain) vs {c[-1]:.4f}; max relative difference {rel:.2%}")
            out["loss_curve"][name] = {"losses": c, "max_rel_diff": rel}
    if args.json:
        save_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

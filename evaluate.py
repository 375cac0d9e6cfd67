"""Reconstruction quality of a pre-trained MIRAM against classical fills, on the same hidden patches.

    python evaluate.py                                   # best checkpoint, validation split of the data
    python evaluate.py --checkpoint PATH --data DIR      # any folder (HR/MASK layout or flat)
    python evaluate.py --mask-ratio 0.5 | --sweep

All metrics are computed on images scaled to [0, 1] by the dataset's robust per-image normalisation
(0.5-99.5 percentiles), predictions clipped to [0, 1]. "masked" = only pixels of hidden patches;
"composite" = the whole image with visible patches pasted back. With ADAPT_STEPS, also the fills of a copy
of the MAE fine-tuned on each image's visible patches first ("miram_adapted"); with SEAMLESS_FILL, also each
fill blended into the visible patches by the Poisson equation instead of pasted ("..._seamless"). Writes
eval_metrics.json and miram_eval_sample.png (and eval_sweep.png with --sweep; miram_eval_transfer.png, a slice of each transfer
head, with TRANSFER_PATH) into OUTPUT_PATH.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adaptation import reconstruct_adapted
from checkpoint import build_from_checkpoint
from config import MiramError, add_config_args, at_least, describe, load_config, margin_key
from dataset import load_slices, load_split, load_transfer, resolve_data_path
from hardware import choose_precision, pick_device
from losses import finite_mean, psnr, ssim
from models import mask_noise, pixel_mask
from records import output_lock, pyplot, run_cli, run_info, save_json, save_stages, stage
from restoration import CLASSICAL_FILLS, classical_fill, seamless_fill


BASELINES = tuple(CLASSICAL_FILLS)
SWEEP = (0.25, 0.5, 0.75, 0.9)


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM reconstruction evaluation")
    p.add_argument("--checkpoint", default=None, help="default: OUTPUT_PATH/best_miram_mae.pth")
    p.add_argument("--data", default=None, help="a folder of images to evaluate on (default: the validation split)")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="mask ratio to evaluate (default: the checkpoint's own MASK_RATIO)")
    p.add_argument("--sweep", action="store_true", help=f"also evaluate mask ratios {SWEEP} and plot them")
    p.add_argument("--baselines", default=",".join(BASELINES), help="comma-separated subset of " + ",".join(BASELINES))
    p.add_argument("--max-images", type=at_least(1), default=None, help="evaluate the first N images only")
    p.add_argument("--n-samples", type=at_least(0), default=4, help="images shown in miram_eval_sample.png")
    return add_config_args(p, "evaluate")


# ---- metrics -----------------------------------------------------------------------------------------

def scores(pred, target, hole):
    """PSNR/SSIM of pred vs target: on the hole only ("masked") and on the whole composite ("composite").

    Both use the composite (visible pixels pasted back), so a method's values outside the hole never count:
    the SSIM windows centred in the hole see the true surroundings, as they do for a classical fill.
    """
    comp = target * (1 - hole) + pred * hole
    return {"masked": {"psnr": psnr(comp, target, weight=hole), "ssim": ssim(comp, target, weight=hole)},
            "composite": {"psnr": psnr(comp, target), "ssim": ssim(comp, target)}}


def seamless(fills, images, holes):
    """seamless_fill over a batch: fills (K, B, 1, H, W) of images (B, 1, H, W) with holes > 0 where hidden
    -> (K, B, 1, H, W); the K fills of an image share its hole, so one factorisation."""
    blended = [seamless_fill(fills[:, i, 0].numpy(), x[0].numpy(), h[0].numpy() > 0)
               for i, (x, h) in enumerate(zip(images, holes))]
    return torch.from_numpy(np.stack(blended, axis=1))[:, :, None].float().clamp(0, 1)


def miram_methods(adapt_steps, blend):
    """The names of MIRAM's fills evaluate() measures, in order: plain, adapted to each image, each blended."""
    methods = ["miram", "miram_adapted"] if adapt_steps else ["miram"]
    return methods + [m + "_seamless" for m in methods] if blend else methods


@torch.no_grad()
def evaluate(model, images, mask_ratio, seed, device, baselines=BASELINES, batch=16, show=(), adapt=(0, 0.0),
             blend=False, amp=False):
    """Per-image metrics of MIRAM (both scales) and the baselines, all on the same seeded masks; the fills of
    the images numbered in `show`, to draw. adapt: (steps, rate) of test-time adaptation; with steps, also
    "miram_adapted" (adaptation.adapt_to_images; amp: its steps under autocast). blend: also every MIRAM fill
    blended in by seamless_fill ("<method>_seamless")."""
    cfg = model.cfg
    p = cfg.patch_size
    noise = mask_noise(len(images), model.encoder.num_patches, seed)
    methods = miram_methods(adapt[0], blend)
    per = {m: {"fine": [], "coarse": []} for m in [*methods, *baselines]}
    show, shown = set(show), []
    bar = tqdm(total=len(images), desc=f"evaluating (mask {mask_ratio})", unit="img", file=sys.stdout,
               disable=not sys.stdout.isatty())
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        batch_noise = noise[start:start + batch].to(device)
        fine, coarse, mask = model.reconstruct(x.to(device), batch_noise, mask_ratio)
        fills = {"miram": (fine, coarse)}
        if adapt[0]:
            seeds = [seed + start + i for i in range(len(x))]
            fills["miram_adapted"] = reconstruct_adapted(model, x.to(device), batch_noise, mask_ratio, *adapt, seeds,
                                                         amp=amp)[:2]
        fills = {m: (f.float().cpu().clamp(0, 1), c.float().cpu().clamp(0, 1)) for m, (f, c) in fills.items()}
        mask = mask.cpu()
        hole = pixel_mask(mask, p, cfg.img_size)
        hole_c = pixel_mask(mask, p // 2, cfg.img_size // 2)
        x_c = F.avg_pool2d(x, 2)
        if blend:
            blended_fine = seamless(torch.stack([f for f, _ in fills.values()]), x, hole)
            blended_coarse = seamless(torch.stack([c for _, c in fills.values()]), x_c, hole_c)
            fills.update({m + "_seamless": pair for m, pair in zip(list(fills), zip(blended_fine, blended_coarse))})
        for m, (f, c) in fills.items():
            per[m]["fine"].append(scores(f, x, hole))
            per[m]["coarse"].append(scores(c, x_c, hole_c))
        for b in baselines:
            filled = torch.from_numpy(np.stack([classical_fill(x[i, 0].numpy(), hole[i, 0].numpy() > 0, b)
                                                for i in range(len(x))]))[:, None].float()
            per[b]["fine"].append(scores(filled, x, hole))
            per[b]["coarse"].append(scores(F.avg_pool2d(filled, 2), x_c, hole_c))
        for i in range(len(x)):
            if start + i in show:
                shown.append({"image": x[i, 0].numpy(), "hole": hole[i, 0].numpy(),
                              "coarse": fills["miram"][1][i, 0].numpy(),
                              "fills": {m: f[i, 0].numpy() for m, (f, _) in fills.items()}})
        bar.update(len(x))
    bar.close()
    return flatten(per), shown


def flatten(per):
    """Lists of batch dicts of tensors -> {method: {scale: {region: {metric: [per-image floats]}}}}."""
    out = {}
    for method, scales in per.items():
        out[method] = {}
        for scale, batches in scales.items():
            out[method][scale] = {region: {metric: torch.cat([b[region][metric] for b in batches]).tolist()
                                           for metric in ("psnr", "ssim")} for region in ("masked", "composite")}
    return out


def summarize(per_image):
    return {m: {s: {r: {k: finite_mean(v) for k, v in reg.items()} for r, reg in sc.items()}
                for s, sc in scales.items()} for m, scales in per_image.items()}


# ---- output ------------------------------------------------------------------------------------------

def table(summary, baselines):
    rows = ["method", *[m for m in summary if m not in baselines], *baselines]
    lines = [f"{'':24s} {'fine masked':>20s} {'fine composite':>20s} {'coarse masked':>20s} {'coarse composite':>20s}",
             f"{'':24s}" + "".join(f" {'PSNR dB / SSIM':>20s}" for _ in range(4))]
    for m in rows[1:]:
        cells = []
        for scale in ("fine", "coarse"):
            for region in ("masked", "composite"):
                r = summary[m][scale][region]
                cells.append(f"{r['psnr']:8.2f} / {r['ssim']:.3f}")
        lines.append(f"{m:24s}" + "".join(f" {c:>20s}" for c in cells))
    return "\n".join(lines)


def margin(summary, baselines, method="miram"):
    """method's masked-patch PSNR minus the best baseline's (fine scale)."""
    if not baselines:
        return None, None
    best = max(baselines, key=lambda b: summary[b]["fine"]["masked"]["psnr"])
    return best, summary[method]["fine"]["masked"]["psnr"] - summary[best]["fine"]["masked"]["psnr"]


def suffix(method):
    """"miram_adapted_seamless" -> "adapted_seamless": the part of a MIRAM fill's result keys that names it."""
    return method[len("miram_"):]


def subject_margins(per_image, rows_by_subject, best):
    """{subject: its slice count, each MIRAM fill's and `best`'s mean masked-patch PSNR and the margins
    (margin_key)}: where a set of a few different heads gains and where it loses (each head weighs by its
    slices in the set's mean)."""
    methods = [m for m in per_image if m.startswith("miram")]
    out = {}
    for subject, rows in rows_by_subject.items():
        mean = lambda m: finite_mean([per_image[m]["fine"]["masked"]["psnr"][i] for i in rows])  # noqa: E731
        out[subject] = {"n_images": len(rows), **{m: mean(m) for m in methods}, best: mean(best)}
        for m in methods:
            out[subject][margin_key(m)] = out[subject][m] - out[subject][best]
    return out


def describe_fill(method, adapt_steps):
    """"miram_adapted_seamless" -> "MIRAM adapted to each image (10 steps), blended in seamlessly"."""
    words = {"adapted": f"adapted to each image ({adapt_steps} steps)", "seamless": "blended in seamlessly"}
    return " ".join(["MIRAM", ", ".join(words[w] for w in suffix(method).split("_") if w)]).strip()


def measure(model, data, ratio, seed, device, baselines, show=(), by_subject=False, adapt=(0, 0.0), blend=False,
            amp=False):
    """-> ({"miram", "baselines", "margin_db", "n_images", "per_image"} of one slice set, the fills of the
    slices numbered in show);
    by_subject: also "per_subject" (subject_margins), for a set of a few heads; adapt (steps, rate), amp and blend:
    the other MIRAM fills (miram_methods), each with its summary under its name and its margin_key."""
    per_image, shown = evaluate(model, data.images, ratio, seed, device, baselines, show=show, adapt=adapt,
                                blend=blend, amp=amp)
    summary = summarize(per_image)
    best, _ = margin(summary, baselines)
    print(table(summary, baselines))
    # baselines: the fine scale's figures at the top level ("masked", "composite"), both scales below
    result = {"baselines": {b: {**summary[b]["fine"], **summary[b]} for b in baselines}, "n_images": len(data),
              "per_image": {"names": data.names, **per_image}}
    if adapt[0]:
        result["adapt"] = {"steps": adapt[0], "lr": adapt[1], "precision": "bf16" if amp else "fp32"}
    methods = miram_methods(adapt[0], blend)
    result["fill_names"] = {m: describe_fill(m, adapt[0]) for m in methods}
    for m in methods:
        result[m] = summary[m]
        gain = margin(summary, baselines, m)[1]
        result[margin_key(m)] = {"vs": best, "masked_psnr": gain}
        if best:
            print(f"{result['fill_names'][m]} vs best baseline ({best}) on masked-patch PSNR: {gain:+.2f} dB")
    if by_subject and best:
        result["per_subject"] = subject_margins(per_image, data.rows_by_subject(), best)
        for subject, r in result["per_subject"].items():
            others = ", ".join(f"{suffix(m).replace('_', ' ')} {r[margin_key(m)]:+.2f}" for m in methods[1:])
            print(f"  {subject}: {r['n_images']} slices, {r['margin_db']:+.2f} dB over {best}"
                  + (f" ({others})" if others else ""))
    return result, shown


def save_figure(shown, path, title):
    """A row per slice: the original, its masked input, the plain fill, its composite, each other MIRAM fill
    measured (adapted, blended in: composites with their masked-patch figures), the coarse scale, and the
    error of the last fill's composite."""
    plt = pyplot()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None]  # noqa: E731
    methods = list(shown[0]["fills"])
    columns = 5 + len(methods)
    fig, axes = plt.subplots(len(shown), columns, figsize=(2.4 * columns, 2.6 * len(shown)), squeeze=False)
    for r, s in enumerate(shown):
        img, hole = s["image"], s["hole"]
        h = t(hole)

        def composite(fill):
            comp = img * (1 - hole) + fill * hole
            return comp, psnr(t(comp), t(img), weight=h).item(), ssim(t(comp), t(img), weight=h).item()

        comp, pm, sm = composite(s["fills"]["miram"])
        pc, sc = psnr(t(comp), t(img)).item(), ssim(t(comp), t(img)).item()
        panels = [(img, "original"), (np.where(hole > 0, 0.5, img), "masked input"),
                  (s["fills"]["miram"], f"fill: masked {pm:.1f} dB / {sm:.2f}"), (comp, f"composite {pc:.1f} dB / {sc:.2f}")]
        for m in methods[1:]:
            comp, pm, sm = composite(s["fills"][m])
            panels.append((comp, f"{suffix(m).replace('_', ', ')}: masked {pm:.1f} dB / {sm:.2f}"))
        panels += [(s["coarse"], "coarse ({0}x{0})".format(s["coarse"].shape[-1])),
                   (np.abs(comp - img), f"|error|, {suffix(methods[-1]).replace('_', ', ') or 'composite'}")]
        for c, (a, name) in enumerate(panels):
            ax = axes[r, c]
            error = c == len(panels) - 1
            ax.imshow(a, cmap="magma" if error else "gray", vmin=0, vmax=0.5 if error else 1)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def one_slice_per_subject(rows_by_subject, limit):
    """The middle slice of each subject, in order, at most limit of them: a figure of a few different heads."""
    return [rows[len(rows) // 2] for rows in rows_by_subject.values()][:limit]


def save_sweep(sweep, path):
    plt = pyplot()
    ratios = sorted(float(r) for r in sweep)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in sweep[str(ratios[0])]:
        axes[0].plot(ratios, [sweep[str(r)][m]["fine"]["masked"]["psnr"] for r in ratios], "o-", label=m)
        axes[1].plot(ratios, [sweep[str(r)][m]["fine"]["composite"]["ssim"] for r in ratios], "o-", label=m)
    axes[0].set_ylabel("masked-patch PSNR (dB)")
    axes[1].set_ylabel("composite SSIM")
    for ax in axes:
        ax.set_xlabel("mask ratio")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    with output_lock(cfg.OUTPUT_PATH):
        result = run(args, cfg)
        save_stages(cfg.artifact("stage_times", "_evaluate"))
        return result


def run(args, cfg):
    baselines = tuple(b for b in args.baselines.split(",") if b)
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise MiramError(f"unknown baseline(s) {sorted(unknown)}; choose from {', '.join(BASELINES)}")
    device = pick_device(cfg.DEVICE)
    ckpt = args.checkpoint or cfg.artifact("mae")
    model, state = build_from_checkpoint(ckpt, "mae", map_location=device)
    model = model.to(device).eval()
    mcfg = model.cfg
    # the adaptation's steps in bf16 where it is native and faster, as training
    amp, amp_why = choose_precision(device, cfg.AMP and cfg.ADAPT_STEPS > 0, mcfg.embed_dim)
    cfg = cfg.adopt(mcfg, AMP=amp)
    print(describe(cfg, script="evaluate") + f"\nprecision of the adaptation: {'bf16' if amp else 'fp32'} ({amp_why})")
    if args.data:
        data = load_slices(args.data, mcfg.img_size, cfg.SUBJECT_PATTERN, slice_axis=cfg.SLICE_AXIS,
                           max_pixels=cfg.MAX_PIXELS)
        source = f"all images in {args.data}"
    else:
        with stage("data read"):
            _, data = load_split(cfg, trained_on=[(ckpt, state)])
        source = f"validation split of {resolve_data_path(cfg, quiet=True)} (subjects never trained on)"
    if args.max_images:
        data = data.subset(range(min(args.max_images, len(data))))
    ratio = mcfg.mask_ratio if args.mask_ratio is None else args.mask_ratio
    if not 0 < ratio < 1:
        raise MiramError(f"--mask-ratio must be in (0, 1), got {ratio}")
    print(f"model: {mcfg.img_size} px, patch {mcfg.patch_size} ({ckpt}, epoch {state.get('epoch')})\n"
          f"evaluating on {len(data)} images: {source}")
    print(f"mask ratio {ratio}, seed {cfg.EVAL_SEED}; intensities in [0, 1] after robust per-image normalisation")

    fills = {"adapt": (cfg.ADAPT_STEPS, cfg.ADAPT_LR), "blend": cfg.SEAMLESS_FILL, "amp": amp}
    with stage("validation split: MIRAM's fills and the classical ones"):
        result, shown = measure(model, data, ratio, cfg.EVAL_SEED, device, baselines, range(args.n_samples), **fills)
    result.update(mask_ratio=ratio, seed=cfg.EVAL_SEED, checkpoint=os.path.abspath(ckpt), epoch=state.get("epoch"),
                  data=source, intensity_range="[0, 1] after robust per-image normalisation (0.5-99.5 pct)",
                  run={**run_info(), "adaptation_precision": {"bf16": amp, "why": amp_why}})
    transfer_shown = None
    with stage("transfer set"):
        transfer, root = (None, "") if args.data else load_transfer(cfg, mcfg.img_size, trained_on=[(ckpt, state)])
        if transfer is not None:
            print(f"transfer set: all {len(transfer)} images in {root} (never trained on)")
            result["transfer"], transfer_shown = measure(model, transfer, ratio, cfg.EVAL_SEED, device, baselines,
                                                         one_slice_per_subject(transfer.rows_by_subject(), args.n_samples),
                                                         by_subject=True, **fills)
            result["transfer"]["data"] = f"all images in {root}"
    if args.sweep:
        result["sweep"] = {}
        for r in SWEEP:
            pr, _ = evaluate(model, data.images, r, cfg.EVAL_SEED, device, baselines)
            result["sweep"][str(r)] = summarize(pr)
            print(f"sweep mask {r}: MIRAM masked PSNR {result['sweep'][str(r)]['miram']['fine']['masked']['psnr']:.2f} dB")
    os.makedirs(cfg.OUTPUT_PATH, exist_ok=True)
    json_path = cfg.artifact("eval_metrics")
    save_json(json_path, result, default=lambda v: None)
    written = [json_path]
    with stage("figures"):
        written += save_figures(args, cfg, result, shown, transfer_shown, ckpt, ratio)
    print("wrote\n  " + "\n  ".join(written))
    return result


def save_figures(args, cfg, result, shown, transfer_shown, ckpt, ratio):
    """The sample figures (validation split, transfer set) and the sweep's -> their paths."""
    written, png_path = [], cfg.artifact("eval_sample")
    if shown:  # --n-samples 0: no figure
        save_figure(shown, png_path, f"MIRAM, mask ratio {ratio}: {os.path.basename(ckpt)}")
        written.append(png_path)
    if transfer_shown:
        written.append(cfg.artifact("eval_transfer_sample"))
        save_figure(transfer_shown, written[-1], f"MIRAM, mask ratio {ratio}, transfer set (a slice of each head): "
                                                 f"{os.path.basename(ckpt)}")
    if args.sweep:
        sweep_path = cfg.artifact("eval_sweep")
        save_sweep(result["sweep"], sweep_path)
        written.append(sweep_path)
    return written


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: nothing of this evaluation was written")

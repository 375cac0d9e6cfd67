"""Real lesions, one fold: detection, pointing and lesion filling on held-out subjects no model here learned from.

    MIRAM_OUTPUT_PATH=outputs/real/ms_lesions/fold0 MIRAM_VAL_SUBJECTS=BRATS_84,BRATS_85,BRATS_86 \
        python bench/lesion_fold.py --json outputs/real/ms_lesions/fold0/lesion_fold.json

Reads the fold's models from OUTPUT_PATH (best_tumor_classifier.pth, best_miram_mae.pth and
best_miram_inpaint.pth, all trained with these subjects held out: load_split refuses them otherwise) and the
held-out subjects' slices with their masks. A slice's lesion size is counted in the scan's own voxels.

- detection: slice-level AUROC of p(tumor), slices with >= MIN_VOXELS lesion voxels against brain slices
  with none, and apart, slices with 1 to MIN_VOXELS - 1 against the same negatives;
- pointing: on the held-out slices with >= MIN_VOXELS, whether the default map's peak lies in a lesion, and
  its mass inside the lesions over their share of the slice (median over slices); a figure of several;
- lesion filling: holes of real lesion shapes (the training subjects' masks, at their own place in the common
  space where they fit, restoration.place_shape) in lesion-free tissue of the held-out slices (drawn from EVAL_SEED), so the truth
  under them is the scan; PSNR and SSIM inside the holes, at the scan's own pixels, of enhance.py --mode
  inpaint's fill, biharmonic and the white-matter mean (restoration.white_matter_mean_fill); pixels outside
  a hole must not change (counted). A figure of real lesions filled beside the scan.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import add_config_args, load_config  # noqa: E402
from records import overlay_heatmap, pyplot, run_info, save_json  # noqa: E402

MIN_VOXELS = 20  # the line between the lesions to detect and the ones reported apart
FILL_METHODS = ("miram", "biharmonic", "white_matter_mean")


def get_args_parser():
    p = argparse.ArgumentParser("detection, pointing and lesion filling on one fold's held-out subjects")
    p.add_argument("--json", required=True, help="where the fold's figures go")
    p.add_argument("--holes-per-subject", type=int, default=40, help="lesion-shaped holes filled on each held-out subject")
    p.add_argument("--n-figure", type=int, default=6, help="slices in each figure")
    return add_config_args(p, "classify")


def detection(p_tumor, voxels):
    """AUROC of slices with >= MIN_VOXELS lesion voxels, and apart of those with fewer, against lesion-free ones."""
    from runtime import auroc
    negative, large, small = voxels == 0, voxels >= MIN_VOXELS, (voxels > 0) & (voxels < MIN_VOXELS)

    def area(positive):  # None (null in the JSON) where a fold has no such slices
        a = auroc(p_tumor[positive | negative], positive[positive | negative])
        return None if a != a else a
    return {"auroc_ge20": area(large), "auroc_small": area(small),
            "n_ge20": int(large.sum()), "n_small": int(small.sum()), "n_negative": int(negative.sum())}


def pointing(heat, lesion):
    """Pointing game and the median mass inside the lesions over their share of the slice. heat, lesion (B, S, S)."""
    from runtime import localization
    mass, hit = localization(heat, lesion)
    share = lesion.mean(axis=(1, 2))
    return {"pointing": float(hit.mean()), "mass_ratio_median": float(np.median(mass / np.maximum(share, 1e-12))),
            "n": len(hit)}


def fill_holes(slices, shapes, restorer, per_subject, rng):
    """Lesion-shaped holes in the held-out slices' lesion-free tissue, filled by each method. slices: {name:
    (slice, lesion)} grouped by subject in order; -> per-method pooled PSNR and mean SSIM inside the holes,
    pixels changed outside a hole, and a few examples for the figure."""
    import torch

    from losses import psnr_from_mse, ssim
    from restoration import biharmonic_fill, enhance_slices, place_shape, scale_of, white_matter_mean_fill
    acc = {m: {"mse": [], "ssim": []} for m in FILL_METHODS}
    changed_outside, examples, n_holes = 0, [], 0
    by_subject = {}
    for name, item in slices.items():
        by_subject.setdefault(name.split("[")[0], []).append((name, *item))
    for subject, items in by_subject.items():
        order = rng.permutation(len(items))
        placed = 0
        for k in order:
            if placed >= per_subject:
                break
            name, img, lesion = items[k]
            brain = img > img.min() + 0.1 * (img.max() - img.min())
            if brain.mean() < 0.1:
                continue
            hole = place_shape(shapes[rng.integers(len(shapes))], brain, lesion, rng)
            if hole is None:
                continue
            placed += 1
            filled = {"miram": enhance_slices(restorer, img[None], "inpaint", hole[None])[0][0],
                      "biharmonic": biharmonic_fill(img, hole),
                      "white_matter_mean": white_matter_mean_fill(img, hole, lesion)}
            lo, hi = scale_of(img)  # scored on training's [0, 1] scale
            t = torch.from_numpy(np.clip((img - lo) / (hi - lo), 0, 1))[None, None]
            w = torch.from_numpy(hole.astype(np.float64))[None, None]
            for m, f in filled.items():
                changed_outside += int((f[~hole] != img[~hole]).sum())
                f = torch.from_numpy(np.clip((f - lo) / (hi - lo), 0, 1))[None, None]
                acc[m]["mse"].append(float(((f - t) ** 2 * w).sum() / w.sum()))
                acc[m]["ssim"].append(ssim(f, t, weight=w).item())
            if len(examples) < 4:
                examples.append((name, img, hole, filled))
        n_holes += placed
    scores = {m: {"psnr": psnr_from_mse(np.mean(r["mse"])), "ssim": float(np.mean(r["ssim"]))} for m, r in acc.items()}
    return {"methods": scores, "n_holes": n_holes, "changed_outside_holes": changed_outside,
            "margin_db": {m: scores["miram"]["psnr"] - scores[m]["psnr"] for m in FILL_METHODS[1:]},
            "ssim_margin": {m: scores["miram"]["ssim"] - scores[m]["ssim"] for m in FILL_METHODS[1:]}}, examples


def save_map_figure(path, images, heats, lesions, names, probs):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 3.0), squeeze=False)
    for ax, img, h, les, name, p in zip(axes[0], images, heats, lesions, names, probs):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        overlay_heatmap(ax, h)
        ax.contour(les.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{name}\np(lesion) {p:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle("held-out subjects: the default map (the classifier's evidence), lesions outlined in green, its peak +", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the title above the panels
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_filling_figure(path, slices, restorer):
    """Real lesions filled: the scan, MIRAM's fill, biharmonic and the white-matter mean, lesions outlined."""
    from restoration import biharmonic_fill, enhance_slices, white_matter_mean_fill
    plt = pyplot()
    fig, axes = plt.subplots(len(slices), 4, figsize=(10, 2.6 * len(slices)), squeeze=False)
    for row, (name, img, lesion) in zip(axes, slices):
        fills = [("scan", img), ("MIRAM (enhance.py --mode inpaint)", enhance_slices(restorer, img[None], "inpaint", lesion[None])[0][0]),
                 ("biharmonic", biharmonic_fill(img, lesion)), ("white-matter mean", white_matter_mean_fill(img, lesion))]
        lo, hi = np.percentile(img, [0.5, 99.5])
        for ax, (title, f) in zip(row, fills):
            ax.imshow(f, cmap="gray", vmin=lo, vmax=hi)
            ax.contour(lesion.astype(float), levels=[0.5], colors="lime", linewidths=0.6)
            ax.set_title(f"{name}: {title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    import torch

    from checkpoint import build_from_checkpoint
    from dataset import load_split, native_slices, resolve_data_path
    from models import torch_corrector, torch_predictor
    from restoration import Restorer, lesion_shapes
    from runtime import tumor_probability
    from tumor import predict_all
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    torch.manual_seed(cfg.EVAL_SEED)
    device = torch.device("cpu")
    clf, clf_state = build_from_checkpoint(cfg.artifact("classifier"), "classifier")
    mae, mae_state = build_from_checkpoint(cfg.artifact("mae"), "mae")
    inpainter, fill_state = build_from_checkpoint(cfg.artifact("inpaint"), "inpaint")
    trained_on = [(cfg.artifact("classifier"), clf_state), (cfg.artifact("mae"), mae_state),
                  (cfg.artifact("inpaint"), fill_state)]
    train_set, val_set = load_split(cfg.adopt(clf.cfg), quiet=True, trained_on=trained_on)
    root = resolve_data_path(cfg, quiet=True)
    held_out = dict(zip(val_set.names, native_slices(root, val_set.names, cfg)))
    voxels = np.array([held_out[n][1].sum() for n in val_set.names])
    probs, heats = predict_all(clf.eval(), val_set.images, device, False, with_attention="evidence")
    p_tumor, heat = tumor_probability(probs), heats["evidence"]
    lesion = val_set.masks[:, 0].numpy()
    large = voxels >= MIN_VOXELS
    report = {"subjects": sorted(set(val_set.subjects)), "slices": len(val_set),
              "detection": detection(p_tumor, voxels), "pointing_ge20": pointing(heat[large], lesion[large])}
    out = cfg.OUTPUT_PATH
    shown = np.flatnonzero(large)[np.linspace(0, large.sum() - 1, min(args.n_figure, int(large.sum()))).astype(int)]
    maps_figure = os.path.join(out, "lesion_maps.png")
    save_map_figure(maps_figure, val_set.images[shown, 0].numpy(), heat[shown], lesion[shown],
                    [val_set.names[i] for i in shown], p_tumor[shown])
    # lesion shapes of the training subjects, at the scan's own pixels (every scan of the set shares its grid)
    train_lesions = [m for _, m in native_slices(root, [n for n, has in zip(train_set.names, train_set.labels) if has],
                                                 cfg)]
    shapes = lesion_shapes(np.stack(train_lesions)) if train_lesions else []
    mc = mae.cfg
    restorer = Restorer(torch_predictor(mae.eval(), device), mc.img_size, mc.patch_size, mc.mask_ratio,
                        correct=torch_corrector(inpainter.eval(), device))
    report["filling"], examples = fill_holes(held_out, shapes, restorer, args.holes_per_subject,
                                             np.random.default_rng(cfg.EVAL_SEED))
    real = [(n, *held_out[n]) for n in (val_set.names[i] for i in shown[:3])]
    filling_figure = os.path.join(out, "lesion_filling.png")
    save_filling_figure(filling_figure, real, restorer)
    report.update(figures=[maps_figure, filling_figure], run=run_info())
    save_json(args.json, report)
    d, pt, f = report["detection"], report["pointing_ge20"], report["filling"]
    print(f"held out {', '.join(report['subjects'])}: detection AUROC {d['auroc_ge20']} (>= {MIN_VOXELS} voxels, "
          f"{d['n_ge20']} slices), {d['auroc_small']} (smaller, {d['n_small']}), {d['n_negative']} without; "
          f"pointing {pt['pointing']:.2f}, mass {pt['mass_ratio_median']:.1f}x the lesions' share (median)\n"
          f"filling {f['n_holes']} lesion-shaped holes: " + ", ".join(
              f"{m} {s['psnr']:.2f} dB / SSIM {s['ssim']:.3f}" for m, s in f["methods"].items())
          + f"; pixels changed outside the holes: {f['changed_outside_holes']}\nwrote {args.json}, {maps_figure}, "
          f"{filling_figure}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

"""Which lesions the classifier learns: the subtle lesion family painted at several sizes and contrasts on the
demo's template slabs, the classifier fine-tuned on each set's labels from the same pre-trained encoder.

    python bench/lesion_limit.py [--radii 3-7 6-10 9-14] [--darkness 0.70-0.85 0.40-0.55] [--seeds 1]
                                 [--checkpoint OUTPUT_PATH/best_miram_mae.pth] [settings flags]

radius: the lesion core's radius in pixels of the template slice (1 mm; the demo classifier reads them at
128 / ~200 of that), darkness: the core's intensity as a share of the tissue around it (lower is more
visible; the demo's tumors reach 0.15-0.40 with radii 8-22 and edema around them). Every set has the demo
set's slabs, split and lesion sites; only the painter's ranges change. Each cell is its own
`python classify.py --dataset-path <set> --output-path OUTPUT_PATH/lesion_limit/<cell>_<settings>_seed<S>`,
kept once finished (the benchmark resumes; <settings> hashes the classifier settings it ran with). Beside
each cell, a classical peer on the same validation slices: a blob detector (Laplacian of Gaussian); with --cnn-peer SIZE, a second one: a small convolutional network trained
from scratch with every pixel's label (the masks) at SIZE pixels, which tells whether these few labels teach
any learner the lesions at that resolution. Where a transfer set is configured (TRANSFER_PATH; the
demo preset's real heads carry the subtle family at radius 3-7 and 70-85%), each checkpoint is also scored there,
never trained there: what a classifier taught on the template's lesions finds on other brains. Writes
OUTPUT_PATH/lesion_limit.json and lesion_limit.md.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from compare import FIGURES, classify_once, figures_of, mean_sd, settings_tag, view_figures  # noqa: E402  (bench/ is this script's folder)
from config import add_config_args, load_config, settings_flags  # noqa: E402
from records import run_info, save_json  # noqa: E402


def span(text):
    """"3-7" -> (3.0, 7.0)."""
    try:
        lo, hi = (float(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, e.g. 3-7, got {text!r}") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH, got {text!r}")
    return lo, hi


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM lesion limit: the classifier on small lesions of several sizes and contrasts")
    p.add_argument("--radii", type=span, nargs="+", default=[(3, 7), (6, 10), (9, 14)],
                   help="core radius ranges in template pixels (LOW-HIGH)")
    p.add_argument("--darkness", type=span, nargs="+", default=[(0.70, 0.85), (0.40, 0.55)],
                   help="core intensity ranges as a share of the tissue around it (LOW-HIGH)")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per cell (1..N)")
    p.add_argument("--checkpoint", default=None, help="pre-trained MAE (default OUTPUT_PATH/best_miram_mae.pth)")
    p.add_argument("--cnn-peer", type=int, default=0, metavar="SIZE",
                   help="also train the convolutional peer at SIZE pixels (0: not; ~6 s an epoch at 128, ~20 at 224 "
                        "on a 2-core CPU)")
    p.add_argument("--cnn-epochs", type=int, default=30, help="the convolutional peer's epochs")
    return add_config_args(p, "classify")


def cell_name(radius, darkness):
    return f"radius{radius[0]:g}-{radius[1]:g}_darkness{darkness[0]:g}-{darkness[1]:g}"


def lesion_set(cfg, radius, darkness):
    """The demo slabs with subtle lesions of these ranges (built once) -> its Brain_MRI folder."""
    from makedata import build_demo_data
    root = os.path.join(cfg.OUTPUT_PATH, "lesion_limit", "data", cell_name(radius, darkness), "Brain_MRI")
    if not os.path.isdir(os.path.join(root, "HR")):
        build_demo_data(root, lesions="subtle", painter_args={"radius": radius, "darkness": darkness})
    return root


def blob_detector(cfg, data, sigmas=(1, 1.5, 2, 3, 4)):
    """The classical peer on the set's validation slices, as the classifier sees them: a scale-normalised
    Laplacian of Gaussian (sigma^2 times the LoG, the strongest over sigmas in pixels of the model's input)
    responds to dark blobs of any of those sizes; a patch scores its strongest response inside the brain, a
    slice its strongest patch. -> {"patch_auroc": the lesion's patch (the one holding
    most of it) against the slice's other patches, "slice_auroc": lesion slices against lesion-free ones}."""
    import dataclasses

    import numpy as np
    from scipy import ndimage
    from sklearn.metrics import roc_auc_score

    from dataset import load_split
    _, val = load_split(dataclasses.replace(cfg, DATASET_PATH=data), quiet=True)
    p = cfg.PATCH_SIZE
    grid = cfg.IMG_SIZE // p
    patch_scores, patch_truth, slice_scores = [], [], []
    for img, mask in zip(val.images[:, 0].numpy().astype(float), val.masks[:, 0].numpy().astype(float)):
        brain = ndimage.binary_erosion(ndimage.gaussian_filter(img, 2) > 0.1, iterations=3)
        log = np.max([s * s * ndimage.gaussian_laplace(img, s) for s in sigmas], axis=0)  # dark blob: positive
        response = np.where(brain, log, -np.inf)
        per_patch = response.reshape(grid, p, grid, p).max(axis=(1, 3)).ravel()
        share = mask.reshape(grid, p, grid, p).mean(axis=(1, 3)).ravel()
        inside = np.isfinite(per_patch)
        slice_scores.append(per_patch[inside].max())
        if share.max() > 0:
            patch_scores.append(per_patch[inside])
            patch_truth.append(share[inside] >= share.max())
    return {"patch_auroc": float(roc_auc_score(np.concatenate(patch_truth), np.concatenate(patch_scores))),
            "slice_auroc": float(roc_auc_score(val.labels.numpy(), slice_scores)), "sigmas": list(sigmas)}


def cnn_peer(cfg, data, size, epochs, seed=0):
    """The convolutional peer on one set: models.ConvEvidence (four conv stages, 16-64 channels) scoring each
    8-pixel cell, trained from scratch on the training slices at `size` pixels with the classifier's augmentation, on
    each cell's label (lesion under it, tumor and background cells weighted equally) plus the slice label of
    the cells' log-mean-exp, as the classifier pools its patches. Dense labels and a convolution's built-in
    translation equivariance are what it has that the ViT's 16-pixel patches lack. -> {"size", "epochs",
    "train_auroc", "val_auroc"} (AUROC of the pooled slice score)."""
    import dataclasses

    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from augment import apply_augment, augment_params
    from dataset import load_split
    from models import ConvEvidence, pool_evidence
    train, val = load_split(dataclasses.replace(cfg, DATASET_PATH=data, IMG_SIZE=size), quiet=True)
    train, val = train.labelled(), val.labelled()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = ConvEvidence(1, 8)  # the classifier's CLS_CONV_EVIDENCE branch, trained alone here
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)

    def pooled(cells):
        return pool_evidence(cells.flatten(1))

    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), 16):
            idx = order[start:start + 16]
            params = augment_params(len(idx), gen)
            x = apply_augment(train.images[idx], params)
            cells = net.cells(x)
            lesion = (F.adaptive_max_pool2d(apply_augment(train.masks[idx].float(), params, intensity=False),
                                            cells.shape[-1]) > 0.5).float()
            weight = torch.where(lesion > 0, 0.5 / lesion.sum().clamp(min=1), 0.5 / (1 - lesion).sum().clamp(min=1))
            loss = (F.binary_cross_entropy_with_logits(cells, lesion, reduction="none") * weight).sum()
            loss = loss + F.binary_cross_entropy_with_logits(pooled(cells), train.labels[idx].float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        def auroc(s):
            scores = torch.cat([pooled(net.cells(s.images[i:i + 32])) for i in range(0, len(s), 32)])
            return float(roc_auc_score(s.labels.numpy(), scores.numpy()))
        return {"size": size, "epochs": epochs, "train_auroc": auroc(train), "val_auroc": auroc(val)}


TRANSFER_FIGURES = (("transfer_auroc", 3), ("transfer_pointing_game", 2))


def transfer_figures(m):
    """AUROC and pointing game of the default map on the transfer set (classification_metrics.json "transfer"),
    where the run had one."""
    if "transfer" not in m:
        return {}
    figures = view_figures(m["transfer"], m["default_heatmap"])
    return {"transfer_auroc": figures["auroc"], "transfer_pointing_game": figures["pointing_game"]}


def markdown(rows):
    cnn = any("cnn_peer" in r for r in rows)
    transfer = any("transfer_auroc" in r for r in rows)

    def figure(r, key, digits):
        return f"{r[key]['mean']:.{digits}f}" + (f" ± {r[key]['sd']:.{digits}f}" if r["seeds"] > 1 else "")
    out = ["| core radius (px) | darkness | seeds | AUROC | pointing game | median mass / share | optimizer steps "
           "| blob detector: slice AUROC (lesion patch AUROC) |" + (" CNN with pixel labels: val (train) AUROC |" if cnn else "")
           + (" transfer set, untrained there: AUROC / pointing game |" if transfer else ""),
           "|---|---|---|---|---|---|---|---|" + ("---|" if cnn else "") + ("---|" if transfer else "")]
    for r in rows:
        cells = [figure(r, k, d) for k, _, d in FIGURES]
        out.append(f"| {r['radius'][0]:g}-{r['radius'][1]:g} | {r['darkness'][0]:g}-{r['darkness'][1]:g} | "
                   f"{r['seeds']} | " + " | ".join(cells) + f" | {r['optimizer_steps']} | "
                   f"{r['blob_detector']['slice_auroc']:.3f} ({r['blob_detector']['patch_auroc']:.3f}) |"
                   + (f" {r['cnn_peer']['val_auroc']:.3f} ({r['cnn_peer']['train_auroc']:.3f}) at {r['cnn_peer']['size']} px, "
                      f"{r['cnn_peer']['epochs']} epochs |" if "cnn_peer" in r else " – |" if cnn else "")
                   + ((" " + " / ".join(figure(r, k, d) for k, d in TRANSFER_FIGURES) + " |"
                       if "transfer_auroc" in r else " – |") if transfer else ""))
    return "\n".join(out) + "\n"


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    checkpoint = os.path.abspath(args.checkpoint or cfg.artifact("mae"))
    if not os.path.isfile(checkpoint):
        sys.exit(f"{checkpoint}: no pre-trained MAE (run `python train.py` first, or pass --checkpoint)")
    print(f"{len(args.radii)} radii x {len(args.darkness)} contrasts x {args.seeds} seeds (finished cells under "
          f"{os.path.join(cfg.OUTPUT_PATH, 'lesion_limit')} are kept)", flush=True)
    rows, runs = [], []
    for radius in args.radii:
        for darkness in args.darkness:
            data = lesion_set(cfg, radius, darkness)
            figures = []
            for seed in range(1, args.seeds + 1):
                out = os.path.join(cfg.OUTPUT_PATH, "lesion_limit",
                                   f"{cell_name(radius, darkness)}_{settings_tag(cfg)}_seed{seed}")
                # after the settings given to this script: the cell's own data and seed win
                flags = ["--checkpoint", checkpoint, *settings_flags(args), "--dataset-path", data,
                         "--seed", str(seed)]
                metrics = classify_once(cfg, out, flags, f"{cell_name(radius, darkness)} seed {seed}")
                figures.append({**figures_of(metrics), **transfer_figures(metrics)})
                runs.append({"radius": radius, "darkness": darkness, "seed": seed, **figures[-1]})
            row = {"radius": radius, "darkness": darkness, "seeds": len(figures),
                   "optimizer_steps": figures[0]["optimizer_steps"], "train_slices": figures[0]["train_slices"],
                   "blob_detector": blob_detector(cfg, data)}
            if args.cnn_peer:
                row["cnn_peer"] = cnn_peer(cfg, data, args.cnn_peer, args.cnn_epochs)
            for key, _, _ in FIGURES:
                row[key] = mean_sd([f[key] for f in figures])
            if all("transfer_auroc" in f for f in figures):
                row.update({k: mean_sd([f[k] for f in figures]) for k, _ in TRANSFER_FIGURES})
            rows.append(row)
    table = markdown(rows)
    save_json(cfg.artifact("lesion_limit"), {"runs": runs, "summary": rows, "checkpoint": checkpoint,
                                             "run": run_info()})
    with open(cfg.artifact("lesion_limit_table"), "w") as f:
        f.write(table)
    print(table + "wrote\n  " + "\n  ".join(cfg.artifact(n) for n in ("lesion_limit", "lesion_limit_table")))
    return rows


if __name__ == "__main__":
    main()

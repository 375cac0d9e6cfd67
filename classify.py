"""Tumor classification on the pre-trained MIRAM encoder, with attention heatmaps that are measured.

    python classify.py                    # fine-tune best_miram_mae.pth (layer-wise lr decay)
    python classify.py --linear-probe     # frozen encoder: what pre-training alone learned
    python classify.py --from-scratch     # same network, no pre-training: the value of pre-training
    python classify.py --predict scan.tif # probability + heatmap for one image, from the best classifier
    python classify.py --predict vol.nii.gz  # every slice of a volume (or folder): a CSV, the top slice's heatmap

The label of an image: its mask has a non-zero pixel. The split is pre-training's (same subjects held out).
Writes into OUTPUT_PATH: best_tumor_classifier.pth, classification_metrics.json, classifier_log.jsonl,
tumor_viz_*.png (variants add a suffix: _linear_probe, _from_scratch), and classifier_checkpoint*.pth to
resume from.
"""
import argparse
import dataclasses
import os
import sys
import warnings

import matplotlib
import numpy as np

from config import (INTERRUPTED_TRAINING, MiramError, add_config_args, describe, load_config, run_cli, run_info,
                    save_json)
from imaging import EXTENSIONS, VOLUME_KINDS, foreground_patches, is_image, model_input, read_scan, split_ext
from runtime import OnnxClassifier, binary_metrics, localization, shift_averaged, upsample_heatmaps

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

# torch, and the modules built on it, are imported in the functions that train or run the PyTorch model:
# `--predict --backend onnx` runs on onnxruntime and numpy alone.


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM tumor classification")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--linear-probe", action="store_true", help="freeze the pre-trained encoder, train the head")
    mode.add_argument("--from-scratch", action="store_true", help="train the same network without pre-training")
    mode.add_argument("--predict", metavar="IMAGE", help="classify one image with the best classifier; a volume, "
                      "stack or folder slice by slice (a CSV of every slice's probability, the highest one's heatmap)")
    p.add_argument("--checkpoint", default=None,
                   help="pre-trained MAE (default OUTPUT_PATH/best_miram_mae.pth); with --predict, the classifier")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="with --predict: onnx runs OUTPUT_PATH/miram_model_optimized.onnx with onnxruntime only")
    p.add_argument("--n-viz", type=int, default=3, help="heatmap figures per group (TP, FP, FN)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a classifier checkpoint exists")
    p.add_argument("--stop-after", type=int, default=None, metavar="E",
                   help="stop after E epochs of this invocation; run again to continue")
    return add_config_args(p)


def variant_of(args):
    return "linear_probe" if args.linear_probe else "from_scratch" if args.from_scratch else "finetune"


def suffix_of(variant):
    return "" if variant == "finetune" else "_" + variant


# ---- inference with heatmaps -------------------------------------------------------------------------

def predict_all(model, images, device, amp, batch=32, with_attention=False, shifted=False):
    """-> probabilities (N,) numpy, and with_attention: {"evidence"|"last_block"|"rollout"|"relevance":
    (N, S, S) heatmaps} (relevance needs the gradient: one backward pass per batch). shifted: averaged over
    the image and its copies moved by half a patch (runtime.shift_averaged), four passes."""
    import torch
    if shifted:
        def run(x):
            out = predict_all(model, torch.from_numpy(x), device, amp, batch, with_attention)
            return out if with_attention else (out, {})
        probs, maps = shift_averaged(run, images.cpu().numpy(), model.cfg.patch_size)
        return (probs, maps) if with_attention else probs

    from hardware import autocast
    from models import cls_maps
    model.eval()
    probs, maps = [], {name: [] for name in HEATMAP_TITLES}
    for s in range(0, len(images), batch):
        x = images[s:s + batch].to(device)
        with torch.set_grad_enabled(with_attention), autocast(device, amp):
            if with_attention:
                logits, atts, keep, valid, scores = model.forward_with_attention(x, "all")
                # a slice's logit depends on its own tokens only: the sum's gradient is each one's own
                grads = torch.autograd.grad(logits.float().sum(), atts)
                with torch.no_grad():
                    for k, v in cls_maps(atts, keep, valid, model.encoder.grid, grads, scores.detach()).items():
                        maps[k].append(v.float().cpu().numpy())
            else:
                logits = model(x)
        probs.append(torch.sigmoid(logits.detach().float()).cpu().numpy())
    probs = np.concatenate(probs)
    if not with_attention:
        return probs
    size = images.shape[-1]
    return probs, {k: upsample_heatmaps(np.concatenate(v), size) for k, v in maps.items()}


# ---- training ----------------------------------------------------------------------------------------

def classification_task(cfg, model, train_set, val_set, device, variant, extra, stage="", epochs=None,
                        warmup_epochs=None):
    """The classifier fine-tune (or probe) as an engine Task: class-balanced BCE, layer-wise lr decay. stage
    goes after the variant's suffix in the artifacts' names ("_teacher" for self-training's first run);
    epochs and warmup_epochs replace CLS_EPOCHS and CLS_WARMUP_EPOCHS. A slice whose has_mask is False (a
    pseudo-labelled tumor slice) has no patch labels and takes no pasted lesion."""
    import torch
    import torch.nn.functional as F

    from dataset import LesionPaster, local_images, variant_index
    from engine import Task, layer_decay
    n_pos = float(train_set.labels.sum())
    n_neg = len(train_set) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MiramError(f"the training split has {int(n_pos)} tumor and {int(n_neg)} tumor-free images: "
                         "classification needs both (check the MASK/ folder)")
    share = cfg.CLS_LESION_PASTE
    known = train_set.has_mask
    paste = LesionPaster(share, train_set.images[known], train_set.masks[known]) if share > 0 else None
    # class balance over the batches' expected mix: a pasted share of each batch is all tumor slices
    pos_weight = torch.tensor((1 - share) * n_neg / ((1 - share) * n_pos + share * len(train_set)), device=device)
    decay = layer_decay(len(model.encoder.blocks), cfg.LAYER_DECAY)
    patch = model.cfg.patch_size
    masks = train_set.masks if cfg.CLS_PATCH_WEIGHT > 0 or paste is not None else None
    images, labels, outlines = anatomy_bank(cfg, train_set)
    if masks is not None:
        masks = outlines
    suffix = suffix_of(variant) + stage

    class Classification(Task):
        name, kind = variant, "classifier"
        lr_setting = "CLS_LR"
        seed_offset = 1
        # the best checkpoint has the lowest class-balanced validation log loss, a proper score: the highest
        # AUROC picked an early epoch where it ties near 1 by chance, its probabilities not yet calibrated
        monitor, maximize, shown = "loss", False, ("auroc", "accuracy")
        must_match = ("variant", "label_fraction", "pseudo_labels")

        def lr_scale(self, name):
            if variant == "linear_probe" and name.startswith("encoder."):
                return None  # frozen
            return decay(name)

        def train_mode(self, m):
            m.train()
            if variant == "linear_probe":
                m.encoder.eval()  # frozen: no dropout or statistics change in the encoder

        def batch(self, gidx, mine, gen):
            # each slice as itself or one of its variants; a slice without a known outline stays itself
            picked = variant_index(gidx, len(train_set), cfg.CLS_ANATOMY_VARIANTS, gen)
            picked = torch.where(known[gidx], picked, gidx)
            sliced = labels[picked[mine]].to(device)
            outlined = known[gidx[mine]].to(device)
            x = local_images(images, picked, mine, gen, device, cfg.AUGMENT, masks, paste=paste)
            if paste is not None:
                x, m, pasted = x
                return x, m, torch.where(pasted, torch.ones_like(sliced), sliced), outlined | pasted
            x, m = x if masks is not None else (x, None)
            return x, m, sliced, outlined

        def forward(self, net, batch):
            return net(batch[0], with_evidence=True)

        def loss(self, out, batch):
            logits, scores, keep, valid = out
            image_loss = F.binary_cross_entropy_with_logits(logits.float(), batch[2], pos_weight=pos_weight)
            if batch[1] is None or cfg.CLS_PATCH_WEIGHT == 0:
                return image_loss, {"loss": image_loss.item()}
            patch_loss = patch_supervision(scores, batch[1], keep, valid, patch, outlined=batch[3])
            loss = image_loss + cfg.CLS_PATCH_WEIGHT * patch_loss
            return loss, {"loss": loss.item(), "image_loss": image_loss.item(), "patch_loss": patch_loss.item()}

        def validate(self, m):
            probs, labels = predict_all(m, val_set.images, device, cfg.AMP), val_set.labels.numpy()
            return {**binary_metrics(probs, labels, cfg.CLS_THRESHOLD), "loss": balanced_log_loss(probs, labels)}

    task = Classification()
    task.epochs = cfg.CLS_EPOCHS if epochs is None else epochs
    task.warmup_epochs = cfg.CLS_WARMUP_EPOCHS if warmup_epochs is None else warmup_epochs
    task.lr = cfg.CLS_LR
    task.weight_decay, task.n_train, task.extra = cfg.CLS_WEIGHT_DECAY, len(train_set), extra
    task.checkpoint = cfg.artifact("classifier_checkpoint", suffix)
    task.best, task.log = cfg.artifact("classifier", suffix), cfg.artifact("classifier_log", suffix)
    return task


def anatomy_bank(cfg, train_set):
    """-> (images, labels, masks) of the training slices followed by CLS_ANATOMY_VARIANTS variants of each
    (dataset.anatomy_variants; variant k of slice i is row k * N + i), or the slices alone without variants.
    A variant of a slice with a known outline is a tumor slice only where its deformed and cropped mask still
    holds half a pixel of tumor; one without keeps its slice's label (batch() never draws it)."""
    import torch

    from dataset import anatomy_variants
    k = cfg.CLS_ANATOMY_VARIANTS
    if k == 0:
        return train_set.images, train_set.labels, train_set.masks
    images, masks = anatomy_variants(train_set.images, k, cfg.SEED, masks=train_set.masks.float())
    tumor_left = (masks[len(train_set):].flatten(1).amax(1) >= 0.5).to(train_set.labels.dtype)
    known = train_set.has_mask.repeat(k)
    labels = torch.cat([train_set.labels, torch.where(known, tumor_left, train_set.labels.repeat(k))])
    return images, labels, masks >= 0.5


def pseudo_labelled(pool, probs, share, tumor_ratio):
    """The `share` of the pool's slices the teacher is surest of, labelled as it says: the likeliest as tumor
    slices and the least likely as tumor-free, tumor_ratio of them tumor (the labelled slices' ratio: the
    teacher's probabilities are ranked, not thresholded, so its calibration does not matter). A tumor-free
    slice's mask is empty and known; a tumor slice's outline is not (has_mask False). -> (SliceSet, a record:
    how many, and where the pool's own masks say, the share labelled right)."""
    import torch
    n = min(len(pool), round(share * len(pool)))
    n_tumor = min(n, round(n * tumor_ratio))
    order = np.argsort(probs, kind="stable")
    tumor = order[len(order) - n_tumor:] if n_tumor else order[:0]
    chosen = np.sort(np.concatenate([order[:n - n_tumor], tumor]))
    picked = pool.subset(chosen.tolist())
    truth, known = picked.labels.clone(), picked.has_mask.clone()
    picked.labels = torch.from_numpy(np.isin(chosen, tumor).astype(np.float32))
    picked.masks = torch.zeros_like(picked.masks)
    picked.has_mask = picked.labels == 0
    record = {"share": share, "pool": len(pool), "n_labelled": int(n), "n_tumor": int(n_tumor),
              "tumor_ratio": tumor_ratio}
    if known.any():
        right = (picked.labels == truth)[known]
        record.update(n_with_masks=int(known.sum()), correct=float(right.float().mean()),
                      tumor_correct=float(right[picked.labels[known] == 1].float().mean())
                      if (picked.labels[known] == 1).any() else None)
    return picked, record


def balanced_log_loss(probs, labels):
    """The mean log loss of each class, averaged over the two classes (as the training loss weights them)."""
    probs = np.clip(np.asarray(probs, float), 1e-7, 1 - 1e-7)
    labels = np.asarray(labels).astype(bool)
    per_class = [-np.log(p).mean() for p in (probs[labels], 1 - probs[~labels]) if len(p)]
    return float(np.mean(per_class))


def patch_supervision(scores, masks, keep, valid, patch, min_share=0.1, full_share=0.5, outlined=None):
    """Binary cross-entropy of each encoded patch's score against its own soft label: its tumor share over
    full_share, capped at 1 (a patch half tumor or more is all tumor), 0 under min_share, and 1 for the
    slice's largest share (a lesion smaller than min_share of a patch, or split between patches, still
    marks the patch that holds most of it); tumor and tumor-free weighted equally (a tumor covers a few
    patches of a slice). The soft label ranks a patch by how much tumor it holds, so the map's peak lands on
    the tumor rather than on a patch that grazes it. Against 0/1 labels (tumor from min_share), 5 seeds on
    the demo slices: pointing game 0.76 +- 0.04 -> 0.86 +- 0.07, AUROC 0.989 -> 0.999 (docs/RESULTS.md).
    scores (B, K), masks (B, 1, S, S) float, keep/valid as the model encoded them; outlined (B,) bool: the
    slices whose masks are known (None: all), the others left out."""
    import torch
    import torch.nn.functional as F
    share = torch.gather(F.avg_pool2d(masks, patch).flatten(1), 1, keep)  # (B, K): tumor share of each patch
    largest = share.amax(1, keepdim=True)
    is_largest = ((share >= largest) & (largest > 0)).float()
    target = torch.where(share >= min_share, (share / full_share).clamp(max=1.0), torch.zeros_like(share))
    target = torch.maximum(target, is_largest)
    real = torch.ones_like(target) if valid is None else valid.to(target.dtype)
    if outlined is not None:
        real = real * outlined[:, None].to(target.dtype)
    bce = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
    loss = 0.0
    for weight in (target * real, (1 - target) * real):
        if weight.sum() > 0:
            loss = loss + 0.5 * (bce * weight).sum() / weight.sum()
    return loss if torch.is_tensor(loss) else scores.sum() * 0


# ---- figures and the report --------------------------------------------------------------------------

# The first is the default: the classifier's own map (what its logit pooled), in the figures, --predict and
# the ONNX export alike; the others are read from attention, as the spec's heatmap was.
HEATMAP_TITLES = {"evidence": "patch evidence (default)", "last_block": "last block CLS attention",
                  "rollout": "attention rollout", "relevance": "gradient-weighted relevance"}
DEFAULT_HEATMAP = next(iter(HEATMAP_TITLES))
# what a prediction averages over (CLS_SHIFT_AVERAGE), as the metrics name it
VIEWS = {False: "single pass", True: "half-patch shifts averaged"}


def save_heatmap_figure(path, image, heats, prob, tumor=None, title=""):
    panels = [("image", None)] + [(HEATMAP_TITLES[k], heats[k]) for k in HEATMAP_TITLES if k in heats]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, h) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        if h is not None:
            ax.imshow(h / max(float(h.max()), 1e-12), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if tumor is not None and tumor.any():
            ax.contour(tumor.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}  p(tumor) = {prob:.3f}" + ("  (green: true tumor outline)" if tumor is not None
                                                      and tumor.any() else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def subject_metrics(probs, labels, hits, rows_by_subject, threshold):
    """{subject: binary metrics over its slices (AUROC None where it has one class), the default heatmap's
    pointing game over its tumor slices (None without one)}: which heads of a few a classifier fails on."""
    out = {}
    for subject, rows in rows_by_subject.items():
        m = binary_metrics(probs[rows], labels[rows], threshold)
        tumor_hits = hits[rows][labels[rows] > 0]
        out[subject] = {k: None if m[k] != m[k] else m[k]  # NaN (one class) -> null in the JSON
                        for k in ("auroc", "accuracy", "sensitivity", "specificity", "n", "n_positive")}
        out[subject]["pointing_game"] = float(tumor_hits.mean()) if len(tumor_hits) else None
    return out


def score(model, data, cfg, device, by_subject=False):
    """-> (binary metrics and every heatmap's localization on one labelled slice set, probabilities,
    heatmaps, tumor masks), from the views CLS_SHIFT_AVERAGE names; the other views' metrics under
    "other_views" (a single pass is what the deployed model runs once: both are worth knowing).
    by_subject: also "per_subject" (subject_metrics), for a set of a few heads."""
    labels = data.labels.numpy()
    pos = labels > 0
    tumor = data.masks[:, 0].numpy() & pos[:, None, None]

    def measured(shifted):
        probs, heats = predict_all(model, data.images, device, cfg.AMP, with_attention=True, shifted=shifted)
        m = binary_metrics(probs, labels, cfg.CLS_THRESHOLD)
        loc, hits = {}, np.zeros(len(labels))  # hits: the default map's pointing game per slice, 0 where no tumor
        for name, h in heats.items():
            if not pos.any():
                loc[name] = {}
                continue
            mass, hit = localization(h[pos], tumor[pos])
            if name == DEFAULT_HEATMAP:
                hits[pos] = hit
            share = tumor[pos].mean(axis=(1, 2))
            loc[name] = {"mass_inside": float(mass.mean()), "pointing_game": float(hit.mean()),
                         "tumor_share_of_image": float(share.mean()),
                         "mass_inside_over_share": float((mass / np.maximum(share, 1e-12)).mean()),
                         # a few slices with most of the mass inside lift the mean: the median is the typical slice
                         "mass_inside_over_share_median": float(np.median(mass / np.maximum(share, 1e-12)))}
        m.update(localization=loc, views=VIEWS[shifted])
        if by_subject:
            m["per_subject"] = subject_metrics(probs, labels, hits, data.rows_by_subject(), cfg.CLS_THRESHOLD)
        return m, probs, heats

    m, probs, heats = measured(cfg.CLS_SHIFT_AVERAGE)
    m["other_views"] = measured(not cfg.CLS_SHIFT_AVERAGE)[0]
    m.update(default_heatmap=DEFAULT_HEATMAP, n_subjects=len(set(data.subjects)))
    return m, probs, heats, tumor


def report(model, val_set, cfg, device, variant, n_viz):
    m, probs, heats, tumor = score(model, val_set, cfg, device)
    m.update(variant=variant, n_val_subjects=m.pop("n_subjects"))
    pos = val_set.labels.numpy() > 0
    pred = probs >= cfg.CLS_THRESHOLD
    written = []
    for group, sel in {"tp": pred & pos, "fp": pred & ~pos, "fn": ~pred & pos}.items():
        for k, i in enumerate(np.nonzero(sel)[0][:n_viz].tolist()):
            path = os.path.join(cfg.OUTPUT_PATH, f"tumor_viz_{group}_{k}{suffix_of(variant)}.png")
            save_heatmap_figure(path, val_set.images[i, 0].numpy(), {n: h[i] for n, h in heats.items()},
                                float(probs[i]), tumor[i], f"{group.upper()} {val_set.names[i]}")
            written.append(path)
    return m, written


# ---- entry points ------------------------------------------------------------------------------------

def slice_classifier(args, cfg):
    """-> (classify(x (N,1,S,S), with_maps) -> (probabilities (N,), {name: (N,S,S) heatmaps} or None), its
    patch size, its foreground threshold), from the best classifier (torch) or its ONNX export; sets
    cfg.IMG_SIZE to the size it reads."""
    if args.backend == "onnx":
        runner = OnnxClassifier(args.checkpoint or cfg.artifact("classifier_onnx"))
        cfg.IMG_SIZE, patch = runner.model_config["img_size"], runner.model_config["patch_size"]

        def run(images):
            prob, maps = runner(images)
            return prob, {k: upsample_heatmaps(v, cfg.IMG_SIZE) for k, v in maps.items()}

        def classify_images(x, with_maps):
            parts = [shift_averaged(run, x[s:s + 32], patch) if cfg.CLS_SHIFT_AVERAGE else run(x[s:s + 32])
                     for s in range(0, len(x), 32)]
            return np.concatenate([p for p, _ in parts]), ({k: np.concatenate([m[k] for _, m in parts])
                                                           for k in parts[0][1]} if with_maps else None)
        return classify_images, patch, runner.threshold
    import torch

    from checkpoint import build_from_checkpoint
    from hardware import pick_device
    device = pick_device(cfg.DEVICE)
    model, _ = build_from_checkpoint(args.checkpoint or cfg.artifact("classifier"), "classifier", map_location=device)
    model = model.to(device)
    cfg.IMG_SIZE, cfg.AMP = model.cfg.img_size, False

    def classify_images(x, with_maps):
        out = predict_all(model, torch.from_numpy(x), device, False, with_attention=with_maps,
                          shifted=cfg.CLS_SHIFT_AVERAGE)
        return out if with_maps else (out, None)
    return classify_images, model.cfg.patch_size, model.cfg.foreground_threshold


def predict_one(args, cfg):
    """Probability and heatmaps for one image, from the best classifier (torch) or its ONNX export. A file
    holding several slices (a NIfTI volume, cut along SLICE_AXIS as training reads it, or a TIFF stack) is
    classified slice by slice, and a folder file by file (unreadable files skipped with a warning each):
    every slice's probability goes into a CSV table, the heatmap figure shows the slice with the highest,
    and a file counts as a tumor when any slice does."""
    folder = os.path.isdir(args.predict)
    files = [args.predict]
    if folder:
        files = [os.path.join(args.predict, f) for f in sorted(os.listdir(args.predict)) if is_image(f)]
        if not files:
            raise MiramError(f"{args.predict}: no {', '.join(EXTENSIONS)} files in this folder")
    classify_images, patch, threshold = slice_classifier(args, cfg)
    print(describe(cfg))
    # rows: (file, slice, probability, share of the slice's patches the classifier read)
    rows, best, unreadable, constant, volumes = [], None, 0, 0, 0
    for path in files:
        try:
            scan = read_scan(path, cfg.MAX_PIXELS, slice_axis=cfg.SLICE_AXIS)
        except MiramError as e:
            if not folder:
                raise
            warnings.warn(f"skipping {e}", stacklevel=2)
            unreadable += 1
            continue
        # nothing to see on a constant slice: any probability would be noise (a volume's edges often are)
        shown = [i for i, sl in enumerate(scan.slices) if sl.max() > sl.min()]
        constant += len(scan.slices) - len(shown)
        if not shown:
            if not folder:
                raise MiramError(f"{path}: constant image (every pixel {scan.slices.flat[0]:g}): nothing to classify"
                                 if len(scan.slices) == 1 else
                                 f"{path}: every one of its {len(scan.slices)} slices is constant: nothing to classify")
            continue
        x = np.concatenate([model_input(scan.slices[i].astype(np.float32), cfg.IMG_SIZE) for i in shown])
        # the maps (relevance needs a backward pass) only for the slice shown; a slice's result does not
        # depend on the others in its batch
        probs, heats = classify_images(x, with_maps=len(files) == len(x) == 1)
        # a volume's end slices hold little brain: the share read says how far a slice is from those trained on
        shares = foreground_patches(x, patch, threshold)[1].sum(axis=1) / (cfg.IMG_SIZE // patch) ** 2
        rows += [(path, i, float(p), float(f)) for i, p, f in zip(shown, probs, shares)]
        volumes += scan.kind in VOLUME_KINDS
        top = int(np.argmax(probs))
        if best is None or probs[top] > best[0]:
            best = (float(probs[top]), path, shown[top], len(scan.slices) > 1, x[top:top + 1], heats)
    if not rows:
        raise MiramError(f"{args.predict}: nothing to classify ({unreadable} unreadable files, "
                         f"{constant} constant slices)")
    prob, path, index, stack, x, heats = best
    if heats is None:
        _, heats = classify_images(x, with_maps=True)
    label = os.path.basename(path) + (f" slice {index}" if stack else "")
    where = f"_slice{index:03d}" if stack else ""
    out = free_name(os.path.join(cfg.OUTPUT_PATH, f"tumor_viz_predict_{split_ext(path)[0]}{where}.png"))
    table = None
    if len(rows) > 1:  # named after the file or folder given
        given = split_ext(os.path.normpath(args.predict))[0]
        table = free_name(os.path.join(cfg.OUTPUT_PATH, f"tumor_predict_{given}.csv"))
    try:
        os.makedirs(cfg.OUTPUT_PATH, exist_ok=True)
        save_heatmap_figure(out, x[0, 0], {k: v[0] for k, v in heats.items()}, prob, None, label)
    except OSError as e:
        raise MiramError(f"{out}: cannot write the heatmap ({e.strerror or e})") from None
    if table:
        try:
            with open(table, "x") as f:
                f.write("file,slice,p_tumor,foreground\n"
                        + "".join(f"{os.path.basename(f_)},{i},{p:.6f},{share:.3f}\n" for f_, i, p, share in rows))
        except OSError as e:
            raise MiramError(f"{table}: cannot write the table ({e.strerror or e})") from None
    verdict = "tumor" if prob >= cfg.CLS_THRESHOLD else "no tumor"
    how = f"(threshold {cfg.CLS_THRESHOLD}, {args.backend}, {VIEWS[cfg.CLS_SHIFT_AVERAGE]})"
    if table:
        read = len({row[0] for row in rows})
        notes = ([f"volumes cut along axis {cfg.SLICE_AXIS}"] if volumes else []) + [
            f"{n} {what} skipped" for n, what in ((unreadable, "unreadable files"), (constant, "constant slices")) if n]
        print(f"{args.predict}: {len(rows)} slices of {read} file{'s' if read > 1 else ''} classified"
              + (f" ({'; '.join(notes)})" if notes else "") + "; "
              f"{sum(row[2] >= cfg.CLS_THRESHOLD for row in rows)} at p(tumor) >= {cfg.CLS_THRESHOLD}; highest "
              f"p(tumor) = {prob:.4f} on {label} -> {verdict} {how}\nper-slice probabilities: {table}"
              f"\nheatmap of {label}: {out}")
    else:
        print(f"{args.predict}: p(tumor) = {prob:.4f} -> {verdict} {how}\nheatmap: {out}")
    return {"probability": prob, "heatmap": out, "heatmaps": heats, "table": table, "file": path, "slice": index,
            "files": [row[0] for row in rows], "slices": [row[1] for row in rows],
            "probabilities": [row[2] for row in rows], "foreground": [row[3] for row in rows]}


def free_name(path):
    """path, or path with _2, _3, ... before the extension: an earlier prediction's figure is kept."""
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}_{n}{ext}"
    return path


def build_model(args, cfg, variant):
    """-> (classifier, where its encoder comes from, the checkpoints it starts from). The classifier reads
    CLS_IMG_SIZE pixels (0: the encoder's own size) and has the CLS_CONV_EVIDENCE branch when asked."""
    from checkpoint import check_weights_fit, load_checkpoint, model_config_from
    from models import TumorClassifier
    if variant == "from_scratch":
        arch = dataclasses.replace(cfg.model_config(), img_size=cfg.CLS_IMG_SIZE or cfg.IMG_SIZE,
                                   conv_evidence=cfg.CLS_CONV_EVIDENCE)
        return TumorClassifier(arch), "random initialisation", []
    mae_path = args.checkpoint or cfg.artifact("mae")
    state = load_checkpoint(mae_path, kind="mae")
    mae_cfg = model_config_from(state, mae_path)
    check_weights_fit(state, "mae", mae_cfg, mae_path)
    size = cfg.CLS_IMG_SIZE or mae_cfg.img_size
    if size % mae_cfg.patch_size:
        raise MiramError(f"CLS_IMG_SIZE {size} is not a multiple of {mae_path}'s patch size {mae_cfg.patch_size}")
    # the encoder's architecture from the checkpoint; which patches it reads, at which size, is this run's
    # setting. Read at another size, its positions keep the range it was pre-trained on.
    pos_grid = mae_cfg.pos_grid
    if size != mae_cfg.img_size:
        pos_grid = pos_grid or mae_cfg.img_size // mae_cfg.patch_size
    model = TumorClassifier(dataclasses.replace(mae_cfg, foreground_threshold=cfg.FOREGROUND_THRESHOLD, img_size=size,
                                                pos_grid=pos_grid, conv_evidence=cfg.CLS_CONV_EVIDENCE))
    encoder_state = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    model.encoder.load_state_dict(encoder_state)  # strict: every encoder key must match
    return model, f"{mae_path} (epoch {state.get('epoch')})", [(mae_path, state)]


def teach(args, cfg, dist, device, model, variant, split_train, labelled, val_set, extra):
    """Self-training's first run (CLS_PSEUDO_LABELS): model trained on the labelled slices as the teacher,
    which labels the training split's slices outside `labelled`. -> (pseudo-labelled SliceSet, a record of
    them and the teacher, fit's result), or None when the teacher stopped early (--stop-after)."""
    from checkpoint import build_from_checkpoint
    from engine import fit
    chosen = set(labelled.subjects)
    pool = split_train.subset(i for i in range(len(split_train))
                              if not (split_train.has_mask[i] and split_train.subjects[i] in chosen))
    if len(pool) == 0:
        raise MiramError("CLS_PSEUDO_LABELS: every training slice is labelled, none is left to pseudo-label "
                         "(lower CLS_LABEL_FRACTION, or add slices without masks)")
    task = classification_task(cfg, model, labelled, val_set, device, variant, extra, stage="_teacher")
    done = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    if done["epochs"] < task.epochs:
        dist.say(f"stopped after epoch {done['epochs']} of the teacher's {task.epochs}: run again to continue")
        return None
    dist.barrier()
    teacher, state = build_from_checkpoint(task.best, "classifier", map_location=device)
    pseudo, record = pseudo_labelled(pool, predict_all(teacher.to(device), pool.images, device, cfg.AMP),
                                     cfg.CLS_PSEUDO_LABELS, float(labelled.labels.mean()))
    record["teacher"] = {**candidate(task.best, state), "optimizer_steps": done["history"][-1]["step"]}
    dist.say(f"self-training: the teacher (validation AUROC {record['teacher']['auroc']:.3f}) labels {len(pseudo)} "
             f"of {len(pool)} unlabelled training slices ({record['n_tumor']} tumor)"
             + (f", {record['correct']:.0%} as their masks say" if "correct" in record else ""))
    return pseudo, record, done


def candidate(path, state):
    """Self-training's record of one of its two classifiers: its best checkpoint and that epoch's validation
    AUROC and log loss, as the checkpoint (state, as loaded) holds them."""
    return {"checkpoint": os.path.abspath(path), "auroc": state["metrics"].get("auroc"),
            "loss": state["metrics"].get("loss")}


def keep_the_better(record, path):
    """Self-training's teacher and student (record["teacher"], record["student"]: each its "checkpoint" and
    validation "loss") are two candidates of one run: the one with the lower validation log loss (the figure
    that picks the best epoch within each) is copied to path, the classifier later phases read; both stay
    under their own names. Notes the choice in record. -> path."""
    from checkpoint import copy_checkpoint
    record["kept"] = "teacher" if record["teacher"]["loss"] < record["student"]["loss"] else "student"
    copy_checkpoint(record[record["kept"]]["checkpoint"], path)
    return path


def finetune(args, cfg, dist):
    import torch

    from checkpoint import build_from_checkpoint
    from dataset import load_split, load_transfer, split_record
    from engine import fit, steps_in_epoch
    from hardware import resolve_amp, tune_for
    device = dist.device(cfg.DEVICE)
    variant = variant_of(args)
    torch.manual_seed(cfg.SEED)
    model, source, parents = build_model(args, cfg, variant)
    cfg.AMP = resolve_amp(device, cfg.AMP, dist.say, model.cfg.embed_dim)
    cfg.IMG_SIZE = model.cfg.img_size
    dist.say(describe(cfg, dist.world))
    model = tune_for(model.to(device), device, cfg.AMP)
    train_set, val_set = load_split(cfg, quiet=not dist.main, trained_on=parents)
    extra = {"variant": variant, "label_fraction": cfg.CLS_LABEL_FRACTION,
             **split_record(cfg, train_set, *(parent for _, parent in parents))}
    # only slices with a mask file carry a label; the others were for pre-training (and self-training)
    split_train = train_set
    train_set = split_train.labelled().subject_fraction(cfg.CLS_LABEL_FRACTION, cfg.SPLIT_SEED)
    val_set = val_set.labelled()
    if len(train_set) == 0 or len(val_set) == 0:
        raise MiramError("classification needs masks (MASK/ folder, same file names as HR/) on both sides of the "
                         f"split; found {len(train_set)} training and {len(val_set)} validation slices with masks")
    n_val_tumor = int(val_set.labels.sum())
    if n_val_tumor in (0, len(val_set)):
        raise MiramError(f"the validation split's {len(val_set)} labelled slices ({', '.join(sorted(set(val_set.subjects)))}"
                         f") are all {'tumor-free' if n_val_tumor == 0 else 'tumor'}: AUROC needs both; name validation "
                         "subjects with both in VAL_SUBJECTS, or draw another split (SPLIT_SEED)")
    dist.say(f"{variant}: encoder from {source}; {len(train_set)} training ({int(train_set.labels.sum())} tumor, "
             f"{len(set(train_set.subjects))} subjects) / "
             f"{len(val_set)} validation ({int(val_set.labels.sum())} tumor) slices, subjects disjoint")
    self_training, labelled = None, train_set
    if cfg.CLS_PSEUDO_LABELS > 0:
        taught = teach(args, cfg, dist, device, model, variant, split_train, train_set, val_set, extra)
        if taught is None:
            return {}
        pseudo, self_training, teacher_run = taught
        # the student: the pre-trained encoder again, the labelled and pseudo-labelled slices, the teacher's steps
        n_student = len(train_set) + len(pseudo)
        per_epoch = [steps_in_epoch(n, cfg.BATCH_SIZE, dist.world, cfg.ACCUM_STEPS)
                     for n in (len(train_set), n_student)]
        epochs = max(1, round(cfg.CLS_EPOCHS * per_epoch[0] / per_epoch[1]))
        warmup = round(cfg.CLS_WARMUP_EPOCHS * per_epoch[0] / per_epoch[1])
        train_set = train_set.joined(pseudo)
        torch.manual_seed(cfg.SEED)
        model, _, _ = build_model(args, cfg, variant)
        model = tune_for(model.to(device), device, cfg.AMP)
        extra = {**extra, "pseudo_labels": cfg.CLS_PSEUDO_LABELS}
        task = classification_task(cfg, model, train_set, val_set, device, variant, extra, epochs=epochs,
                                   warmup_epochs=warmup)
        # the classifier is the better of teacher and student (keep_the_better); the student's own is kept apart
        task.best = cfg.artifact("classifier", suffix_of(variant) + "_student")
        if args.stop_after is not None:
            args.stop_after = max(0, args.stop_after - teacher_run["epochs_run"])
    else:
        task = classification_task(cfg, model, train_set, val_set, device, variant, extra)
    result = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    dist.barrier()
    if not dist.main:
        return {}
    if not os.path.isfile(task.best):
        dist.say("stopped before the classifier's first epoch: run again to continue")
        return {}
    kept = task.best
    if self_training is not None:
        from checkpoint import load_checkpoint
        self_training["student"] = candidate(task.best, load_checkpoint(task.best, "classifier"))
        kept = keep_the_better(self_training, cfg.artifact("classifier", suffix_of(variant)))
    best, best_state = build_from_checkpoint(kept, "classifier", map_location=device)
    metrics, figures = report(best.to(device), val_set, cfg, device, variant, args.n_viz)
    transfer, root = load_transfer(cfg, cfg.IMG_SIZE, trained_on=[(kept, best_state)])
    if transfer is not None and transfer.has_mask.any():
        transfer = transfer.labelled()
        metrics["transfer"], *_ = score(best, transfer, cfg, device, by_subject=True)
        metrics["transfer"]["data"] = f"all {len(transfer)} images in {root}, no training on them"
    if self_training is not None:
        metrics["self_training"] = self_training
    # counted from the logs: a resumed run's steps include the earlier invocations', and the teacher's
    steps = (self_training["teacher"]["optimizer_steps"] if self_training else 0) + \
        (result["history"][-1]["step"] if result["history"] else 0)
    metrics.update(history=result["history"], optimizer_steps=steps, n_train_slices=len(labelled),
                   training_precision="bf16" if cfg.AMP else "fp32",
                   n_train_subjects=len(set(labelled.subjects)), label_fraction=cfg.CLS_LABEL_FRACTION,
                   checkpoint=os.path.abspath(kept), run=run_info())
    json_path = cfg.artifact("classification_metrics", suffix_of(variant))
    save_json(json_path, metrics)
    cm = metrics["confusion_matrix"]
    print(f"[{variant}] validation: AUROC {metrics['auroc']:.3f}  accuracy {metrics['accuracy']:.3f}  "
          f"sensitivity {metrics['sensitivity']:.3f}  specificity {metrics['specificity']:.3f}  F1 {metrics['f1']:.3f}"
          f"  (threshold {metrics['threshold']})\n  confusion [[TN FP] [FN TP]] = {cm}")
    for name, loc in metrics["localization"].items():
        if loc:
            print(f"  heatmap {name}: {loc['mass_inside']:.3f} of the mass inside the tumor "
                  f"({loc['mass_inside_over_share']:.1f}x its share of the image on average, "
                  f"{loc['mass_inside_over_share_median']:.1f}x on the median slice), "
                  f"pointing game {loc['pointing_game']:.2f}")
    t = metrics.get("transfer")
    if t:
        loc = t["localization"].get(DEFAULT_HEATMAP) or {}
        print(f"  transfer set ({t['data']}): AUROC {t['auroc']:.3f}  accuracy {t['accuracy']:.3f}"
              + (f"  {DEFAULT_HEATMAP} map: pointing game {loc['pointing_game']:.2f}, "
                 f"{loc['mass_inside_over_share_median']:.1f}x on the median slice" if loc else ""))
        for subject, h in t.get("per_subject", {}).items():
            print(f"    {subject}: {h['n']} slices, {h['n_positive']} with a lesion, AUROC "
                  + ("-" if h["auroc"] is None else f"{h['auroc']:.3f}")
                  + ("" if h["pointing_game"] is None else f", pointing game {h['pointing_game']:.2f}"))
    print("wrote\n  " + "\n  ".join([kept, json_path, *figures]))
    return metrics


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    if args.predict:
        return predict_one(args, cfg)
    from checkpoint import output_lock
    from engine import Distributed
    with Distributed(cfg.DEVICE) as dist, output_lock(cfg.OUTPUT_PATH, dist.main, dist.say):
        return finetune(args, cfg, dist)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: nothing was written" if "--predict" in sys.argv else INTERRUPTED_TRAINING)

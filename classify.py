"""Tumor classification on the pre-trained MIRAM encoder, with heatmaps that are measured against the outline.

    python classify.py                    # fine-tune best_miram_mae.pth (layer-wise lr decay)
    python classify.py --linear-probe     # frozen encoder: what pre-training alone learned
    python classify.py --from-scratch     # same network, no pre-training: the value of pre-training
    python classify.py --predict scan.tif # probability + heatmap for one image, from the best classifier
    python classify.py --predict vol.nii.gz  # every slice of a volume (or folder): a CSV, the top slice's heatmap

The label of an image: its mask has a non-zero pixel, or its class folder (the tumor-free one named like no,
normal or notumor). The split is pre-training's (same subjects held out).
Writes into OUTPUT_PATH: best_tumor_classifier.pth, classification_metrics.json, classifier_log.jsonl,
tumor_viz_*.png (variants add a suffix: _linear_probe, _from_scratch), and classifier_checkpoint*.pth to
resume from. The training task, losses and metrics are in tumor.py.
"""
import argparse
import dataclasses
import os
import sys
import warnings

import numpy as np

from config import MiramError, add_config_args, at_least, describe, load_config
from imaging import (EXTENSIONS, VOLUME_KINDS, foreground_patches, list_images, model_input, read_scan, source_pixel,
                     split_ext, stored_voxel)
from layouts import NEGATIVE_CLASS
from records import (INTERRUPTED_TRAINING, overlay_heatmap, pyplot, run_cli, run_info, save_json, save_stages,
                     stage)
from runtime import (DEFAULT_HEATMAP, OnnxClassifier, class_columns, class_names, predicted_class, trained_range,
                     tumor_probability, upsample_heatmaps)


# torch, and the modules built on it, are imported in the functions that train or run the PyTorch model:
# `--predict --backend onnx` runs on onnxruntime and numpy alone.

HEATMAP_TITLES = {"evidence": "evidence (default)", "last_block": "last block CLS attention",
                  "rollout": "attention rollout", "relevance": "gradient-weighted relevance"}


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
    p.add_argument("--n-viz", type=at_least(0), default=3, help="heatmap figures per group (TP, FP, FN)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a classifier checkpoint exists")
    p.add_argument("--stop-after", type=at_least(1), default=None, metavar="E",
                   help="stop after E epochs of this invocation; run again to continue")
    return add_config_args(p, "classify")


def save_heatmap_figure(path, image, heats, prob, tumor=None, title=""):
    plt = pyplot()
    panels = [("image", None)] + [(HEATMAP_TITLES[k], heats[k]) for k in HEATMAP_TITLES if k in heats]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, h) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        if h is not None:
            overlay_heatmap(ax, h)
        if tumor is not None and tumor.any():
            ax.contour(tumor.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}  p(tumor) = {prob:.3f}" + ("  (green: true tumor outline)" if tumor is not None
                                                      and tumor.any() else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- training ------------------------------------------------------------------------------------------

def finetune(args, cfg, dist):
    import torch

    from checkpoint import build_from_checkpoint, check_weights_fit, load_checkpoint, model_config_from
    from dataset import load_split, load_transfer
    from splits import split_record
    from engine import fit
    from hardware import apply_kernels, choose_kernels
    from tumor import Classification, build_classifier, score, suffix_of
    device = dist.device(cfg.DEVICE)
    variant = "linear_probe" if args.linear_probe else "from_scratch" if args.from_scratch else "finetune"
    parents, source, mae_path, mae_state = [], "random initialisation", None, None
    if variant != "from_scratch":
        mae_path = args.checkpoint or cfg.artifact("mae")
        mae_state = load_checkpoint(mae_path, kind="mae")
        check_weights_fit(mae_state, "mae", model_config_from(mae_state, mae_path), mae_path)
        parents, source = [(mae_path, mae_state)], f"{mae_path} (epoch {mae_state.get('epoch')})"
    torch.manual_seed(cfg.SEED)
    model = build_classifier(cfg, variant, mae_path, mae_state)
    # what runs, resolved once: the encoder's architecture at the size the classifier reads, this run's kernels
    with stage("kernels chosen"):
        kernels = choose_kernels(device, cfg.AMP, model.cfg.embed_dim, cfg.MATMUL, dist.say)
    cfg = cfg.adopt(model.cfg, FOREGROUND_THRESHOLD=cfg.FOREGROUND_THRESHOLD, AMP=kernels.precision == "bf16")
    dist.say(describe(cfg, dist.world, "classify") + "\n" + kernels.line())
    with stage("data read"):
        train_set, val_set = load_split(cfg, quiet=not dist.main, trained_on=parents)
    if len(train_set.classes) > 2:  # one head output a class: built again, from the same seed
        torch.manual_seed(cfg.SEED)
        model = build_classifier(cfg, variant, mae_path, mae_state, num_classes=len(train_set.classes))
    model = apply_kernels(model.to(device), kernels)
    extra = {"variant": variant, "label_fraction": cfg.CLS_LABEL_FRACTION,
             **split_record(cfg, train_set, *(parent for _, parent in parents))}
    # only slices with a mask file or a class folder carry a label; the others were for pre-training
    train_set = train_set.labelled().subject_fraction(cfg.CLS_LABEL_FRACTION, cfg.SPLIT_SEED)
    val_set = val_set.labelled()
    if len(train_set) == 0 or len(val_set) == 0:
        raise MiramError("classification needs labels on both sides of the split (masks in MASK/ with the file names "
                         f"of HR/, or class folders); found {len(train_set)} training and {len(val_set)} validation "
                         "labelled slices")
    classes = extra["classes"] = list(train_set.classes) or ["no tumor", "tumor"]
    extra["trained_foreground"] = foreground_range(train_set.images.numpy(), model.cfg)
    n_val_tumor = int((val_set.labels > 0).sum())
    if n_val_tumor in (0, len(val_set)):
        raise MiramError(f"the validation split's {len(val_set)} labelled slices ({', '.join(sorted(set(val_set.subjects)))}"
                         f") are all {reference_name(classes) if n_val_tumor == 0 else 'tumor'}: AUROC needs "
                         "both; name validation subjects with both in VAL_SUBJECTS, or draw another split (SPLIT_SEED)")
    if train_set.classes:
        dist.say(f"classes from the folders: {class_roles(classes)}")

    def counts(data):
        n = np.bincount(data.labels.numpy().astype(int), minlength=len(classes))
        return f"{n[1]} tumor" if len(classes) == 2 else ", ".join(f"{k} {c}" for k, c in zip(n, classes))
    dist.say(f"{variant}: encoder from {source}; {len(train_set)} training ({counts(train_set)}, "
             f"{len(set(train_set.subjects))} subjects) / "
             f"{len(val_set)} validation ({counts(val_set)}) slices, subjects disjoint")
    task = Classification(cfg, model, train_set, val_set, device, variant, extra)
    task.kernels = kernels.to_dict()
    with stage("epochs"):
        result = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    dist.barrier()
    if not dist.main:
        return {}
    if not os.path.isfile(task.best):
        dist.say("stopped before the classifier's first epoch: run again to continue")
        return {}
    best, best_state = build_from_checkpoint(task.best, "classifier", map_location=device)
    best = best.to(device)
    with stage("best model scored, heatmaps"):
        metrics, probs, heats, tumor = score(best, val_set, cfg, device)
    metrics.update(variant=variant, n_val_subjects=metrics.pop("n_subjects"))
    with stage("figures"):
        figures = write_figures(cfg, val_set, probs, heats, tumor, suffix_of(variant), args.n_viz)
    with stage("transfer set"):
        transfer, root = load_transfer(cfg, cfg.IMG_SIZE, trained_on=[(task.best, best_state)])
        if transfer is not None and transfer.has_mask.any() and best.cfg.num_classes == 2:  # its labels are binary
            transfer = transfer.labelled()
            metrics["transfer"], *_ = score(best, transfer, cfg, device, by_subject=True)
            metrics["transfer"]["data"] = f"all {len(transfer)} images in {root}, no training on them"
    # counted from the log: a resumed run's steps include the earlier invocations'
    metrics.update(history=result["history"], optimizer_steps=result["history"][-1]["step"] if result["history"] else 0,
                   n_train_slices=len(train_set), training_precision=kernels.precision,
                   n_train_subjects=len(set(train_set.subjects)), label_fraction=cfg.CLS_LABEL_FRACTION,
                   checkpoint=os.path.abspath(task.best), run={**run_info(), "kernels": task.kernels})
    json_path = cfg.artifact("classification_metrics", suffix_of(variant))
    save_json(json_path, metrics)
    print_report(variant, metrics)
    print("wrote\n  " + "\n  ".join([task.best, json_path, *figures]))
    return metrics


def reference_name(classes):
    """What class 0 is, in words: tumor-free, or the class folder taken as the reference."""
    return "tumor-free" if classes[0] == "no tumor" or NEGATIVE_CLASS.match(classes[0]) else f"of class {classes[0]!r}"


def class_roles(classes):
    """How the class folders were read: "'no' tumor-free (0), 'yes' tumor (1)"."""
    if len(classes) == 2:
        return f"{classes[0]!r} tumor-free (0), {classes[1]!r} tumor (1)"
    first = "tumor-free" if reference_name(classes) == "tumor-free" else "the reference (no folder named as tumor-free)"
    return f"{classes[0]!r} {first} (0), " + ", ".join(f"{c!r} ({k})" for k, c in enumerate(classes[1:], 1))


def foreground_range(images, mcfg, tail=0.01):
    """[low, high]: the share of the patches the classifier reads (foreground) on the slices it learns from, the
    1st and 99th percentiles. --predict marks slices outside it (a vertex, a slab of neck, another body part)."""
    shares = foreground_share(images, mcfg.patch_size, mcfg.foreground_threshold)
    return [float(np.quantile(shares, tail)), float(np.quantile(shares, 1 - tail))]


def foreground_share(images, patch, threshold):
    """(N, 1, S, S) -> the share of each image's patches above the foreground threshold."""
    return foreground_patches(images, patch, threshold)[1].sum(axis=1) / (images.shape[-1] // patch) ** 2


def write_figures(cfg, data, probs, heats, tumor, suffix, n_viz):
    """Heatmap figures of the first n_viz true positives, false positives and misses (of any tumor against
    class 0, with K classes; the title names the predicted class). -> their paths."""
    pos = data.labels.numpy() > 0
    p_tumor, called = tumor_probability(probs), predicted_class(probs, cfg.CLS_THRESHOLD)
    pred = called > 0
    written = []
    for group, sel in {"tp": pred & pos, "fp": pred & ~pos, "fn": ~pred & pos}.items():
        for k, i in enumerate(np.nonzero(sel)[0][:n_viz].tolist()):
            path = os.path.join(cfg.OUTPUT_PATH, f"tumor_viz_{group}_{k}{suffix}.png")
            what = "" if probs.ndim == 1 else (f" (true {data.classes[int(data.labels[i])]}, called "
                                               f"{data.classes[called[i]]} {probs[i, called[i]]:.2f})")
            save_heatmap_figure(path, data.images[i, 0].numpy(), {n: h[i] for n, h in heats.items()},
                                float(p_tumor[i]), tumor[i], f"{group.upper()} {data.names[i]}{what}")
            written.append(path)
    return written


def print_report(variant, metrics):
    cm = metrics["confusion_matrix"]
    if "per_class" in metrics:
        print(f"[{variant}] validation: macro one-vs-rest AUROC {metrics['auroc']:.3f}  accuracy {metrics['accuracy']:.3f}"
              f"  macro sensitivity {metrics['macro_sensitivity']:.3f}\n" + "\n".join(
                  f"  {name}: sensitivity {c['sensitivity']:.3f}  specificity {c['specificity']:.3f}  AUROC "
                  f"{c['auroc']:.3f}  ({c['n']} slices)" for name, c in metrics["per_class"].items())
              + f"\n  confusion (rows true, columns predicted: {', '.join(metrics['classes'])}) = {cm}")
        t = metrics["any_tumor"]
        print(f"  any tumor against {metrics['classes'][0]!r}: AUROC {t['auroc']:.3f}  sensitivity {t['sensitivity']:.3f}"
              f"  specificity {t['specificity']:.3f}  (threshold {t['threshold']})")
    else:
        print(f"[{variant}] validation: AUROC {metrics['auroc']:.3f}  accuracy {metrics['accuracy']:.3f}  "
              f"sensitivity {metrics['sensitivity']:.3f}  specificity {metrics['specificity']:.3f}  F1 {metrics['f1']:.3f}"
              f"  (threshold {metrics['threshold']})\n  confusion [[TN FP] [FN TP]] = {cm}")
    op = metrics["operating_point"]
    if op["threshold"] == op["threshold"]:
        print(f"  operating point ({op['rule']}): threshold {op['threshold']:.3f}, sensitivity "
              f"{op['sensitivity']:.3f}, specificity {op['specificity']:.3f}")
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


# ---- prediction ----------------------------------------------------------------------------------------

def slice_classifier(args, cfg):
    """-> (classify(x (N,1,S,S), maps) -> (probabilities ((N,) of two classes, (N, K) of more), {name:
    (N,S,S) heatmaps}: maps "evidence", the default map (cheap), or "all"), its class names, the size it
    reads, its patch size, its foreground threshold, the foreground range of its training slices or None
    where not recorded), from the best classifier (torch) or its ONNX export."""
    if args.backend == "onnx":
        runner = OnnxClassifier(args.checkpoint or cfg.artifact("classifier_onnx"))
        size, patch = runner.model_config["img_size"], runner.model_config["patch_size"]

        def classify_images(x, maps):  # the graph computes its maps in any case
            parts = [runner(x[s:s + 32]) for s in range(0, len(x), 32)]
            probs = np.concatenate([p for p, _ in parts])
            return probs, {k: upsample_heatmaps(np.concatenate([m[k] for _, m in parts]), size) for k in parts[0][1]}
        return classify_images, runner.classes, size, patch, runner.threshold, runner.trained_foreground
    import torch

    from checkpoint import build_from_checkpoint
    from hardware import pick_device
    from tumor import predict_all
    device = pick_device(cfg.DEVICE)
    path = args.checkpoint or cfg.artifact("classifier")
    model, state = build_from_checkpoint(path, "classifier", map_location=device)
    model = model.to(device)
    trained = trained_range(state["trained_foreground"], path) if state.get("trained_foreground") else None
    classes = class_names(state.get("classes"), model.cfg.num_classes, path)

    def classify_images(x, maps):
        return predict_all(model, torch.from_numpy(x), device, False, with_attention=True if maps == "all" else maps)
    return (classify_images, classes, model.cfg.img_size, model.cfg.patch_size, model.cfg.foreground_threshold,
            trained)


def predict(args, cfg):
    """Probability and heatmaps for one image, from the best classifier (torch) or its ONNX export. A file
    holding several slices (a volume, cut along SLICE_AXIS as training reads it, or a TIFF stack) is
    classified slice by slice, and a folder file by file (unreadable files skipped with a warning each):
    every slice's probability, the share of its patches read and where its default heatmap peaks (in the
    file's own pixels or voxels) go into a CSV table, and the heatmap figure shows the slice with the highest
    probability. A slice whose share lies outside that of the slices the classifier learned from (a vertex, a
    slab of neck) is marked and does not decide; a file is a tumor when a slice that decides is."""
    folder = os.path.isdir(args.predict)
    files = [args.predict]
    if folder:
        files = list_images(args.predict)
        if not files:
            raise MiramError(f"{args.predict}: no {', '.join(EXTENSIONS)} files in this folder")
    classify_images, classes, size, patch, threshold, trained = slice_classifier(args, cfg)
    cfg = dataclasses.replace(cfg, IMG_SIZE=size)
    print(describe(cfg, script="classify"))
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
        x = np.concatenate([model_input(scan.slices[i].astype(np.float32), size) for i in shown])
        class_probs, heats = classify_images(x, "evidence")  # where each slice's evidence peaks
        probs, called = tumor_probability(class_probs), predicted_class(class_probs, cfg.CLS_THRESHOLD)
        class_p = class_columns(class_probs)
        shares = foreground_share(x, patch, threshold)
        volume = scan.kind in VOLUME_KINDS
        volumes += volume
        file_rows = []
        for k, (i, p, share) in enumerate(zip(shown, probs, shares)):
            peak = np.unravel_index(int(np.argmax(heats[DEFAULT_HEATMAP][k])), (size, size))
            row, col = source_pixel(*peak, scan.slices.shape[1:], size)
            file_rows.append({"path": path, "file": os.path.basename(path), "slice": i, "p_tumor": float(p),
                              "class": classes[called[k]], "p_class": float(class_p[k, called[k]]),
                              "foreground": float(share),
                              "decides": trained is None or trained[0] <= share <= trained[1],
                              **(dict(zip(("peak_i", "peak_j", "peak_k"), stored_voxel(scan, i, row, col))) if volume
                                 else {"peak_row": row, "peak_col": col})})
        rows += file_rows
        # a file none of whose slices lies in the training range is still called, on all of them
        deciding = [k for k, r in enumerate(file_rows) if r["decides"]] or range(len(file_rows))
        top = max(deciding, key=lambda k: probs[k])
        if best is None or probs[top] > best[0]:
            best = (float(probs[top]), path, shown[top], len(scan.slices) > 1, x[top:top + 1], file_rows[top]["class"])
    if not rows:
        raise MiramError(f"{args.predict}: nothing to classify ({unreadable} unreadable files, "
                         f"{constant} constant slices)")
    prob, path, index, stack, x, called = best
    verdict = ("tumor" if prob >= cfg.CLS_THRESHOLD else "no tumor") + (
        f" (class {called!r})" if called not in ("tumor", "no tumor") else "")
    _, heats = classify_images(x, "all")  # every map of the slice shown (relevance needs a backward pass)
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
        write_table(table, rows)
    how = f"(threshold {cfg.CLS_THRESHOLD}, {args.backend})"
    peak = next(r for r in rows if r["path"] == path and r["slice"] == index)
    at = ", ".join(f"{k[5:]} {peak[k]}" for k in PEAK_COLUMNS if k in peak)
    if table:
        read = len({row["file"] for row in rows})
        apart = sum(not row["decides"] for row in rows)
        notes = ([f"volumes cut along axis {cfg.SLICE_AXIS}"] if volumes else []) + [
            f"{n} {what} skipped" for n, what in ((unreadable, "unreadable files"), (constant, "constant slices")) if n]
        print(f"{args.predict}: {len(rows)} slices of {read} file{'s' if read > 1 else ''} classified"
              + (f" ({'; '.join(notes)})" if notes else "") + "; "
              f"{sum(row['p_tumor'] >= cfg.CLS_THRESHOLD for row in rows)} at p(tumor) >= {cfg.CLS_THRESHOLD}"
              + (f"; {apart} outside the foreground range of the training slices "
                 f"({trained[0]:.2f}-{trained[1]:.2f}), marked and not deciding" if apart else "")
              + f"; highest deciding p(tumor) = {prob:.4f} on {label} -> {verdict} {how}\n"
              f"per-slice probabilities: {table}\nheatmap of {label} (peak at {at}): {out}")
    else:
        print(f"{args.predict}: p(tumor) = {prob:.4f} -> {verdict} {how}\nheatmap (peak at {at}): {out}")
    return {"probability": prob, "class": called, "heatmap": out, "heatmaps": heats, "table": table, "file": path, "slice": index,
            "files": [r["path"] for r in rows], "rows": rows,
            "slices": [r["slice"] for r in rows], "probabilities": [r["p_tumor"] for r in rows],
            "foreground": [r["foreground"] for r in rows]}


PEAK_COLUMNS = ("peak_row", "peak_col", "peak_i", "peak_j", "peak_k")
TABLE_COLUMNS = ("file", "slice", "p_tumor", "class", "p_class", "foreground", "decides") + PEAK_COLUMNS


def write_table(path, rows):
    """The per-slice CSV: a column blank where it does not apply (voxel peaks for 2-D files, pixel peaks for
    volumes)."""
    def cell(row, key):
        value = row.get(key, "")
        return f"{value:.6f}" if key in ("p_tumor", "p_class") else f"{value:.3f}" if key == "foreground" else (
            str(int(value)) if isinstance(value, bool) else str(value))
    try:
        with open(path, "x") as f:
            f.write(",".join(TABLE_COLUMNS) + "\n" + "".join(",".join(cell(r, k) for k in TABLE_COLUMNS) + "\n"
                                                           for r in rows))
    except OSError as e:
        raise MiramError(f"{path}: cannot write the table ({e.strerror or e})") from None


def free_name(path):
    """path, or path with _2, _3, ... before the extension: an earlier prediction's figure is kept."""
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}_{n}{ext}"
    return path


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    if args.predict:
        return predict(args, cfg)
    from records import output_lock
    from engine import Distributed
    with Distributed(cfg.DEVICE) as dist, output_lock(cfg.OUTPUT_PATH, dist.main, dist.say):
        metrics = finetune(args, cfg, dist)
        if dist.main:
            save_stages(cfg.artifact("stage_times", "_classify"))
        return metrics


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: nothing was written" if "--predict" in sys.argv else INTERRUPTED_TRAINING)

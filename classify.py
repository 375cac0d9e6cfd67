"""Tumor classification on the pre-trained MIRAM encoder, with attention heatmaps that are measured.

    python classify.py                    # fine-tune best_miram_mae.pth (layer-wise lr decay)
    python classify.py --linear-probe     # frozen encoder: what pre-training alone learned
    python classify.py --from-scratch     # same network, no pre-training: the value of pre-training
    python classify.py --predict scan.tif # probability + heatmap for one image, from the best classifier

The label of an image: its mask has a non-zero pixel. The split is pre-training's (same subjects held out).
Writes into OUTPUT_PATH: best_tumor_classifier.pth, classification_metrics.json, tumor_viz_*.png
(variants add a suffix: _linear_probe, _from_scratch), and classifier_checkpoint*.pth to resume from.
"""
import argparse
import dataclasses
import json
import os
import time

import numpy as np

from config import MiramError, add_config_args, describe, load_config, run_cli
from dataset import fit_to_square, normalize_intensity, read_image

# torch (and models/train, which need it) are imported where used: `--predict --backend onnx` runs on
# onnxruntime and numpy alone.

BEST = "best_tumor_classifier.pth"
ONNX = "miram_model_optimized.onnx"


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM tumor classification")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--linear-probe", action="store_true", help="freeze the pre-trained encoder, train the head")
    mode.add_argument("--from-scratch", action="store_true", help="train the same network without pre-training")
    mode.add_argument("--predict", metavar="IMAGE", help="classify one image with the best classifier")
    p.add_argument("--checkpoint", default=None,
                   help="pre-trained MAE (default OUTPUT_PATH/best_miram_mae.pth); with --predict, the classifier")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="with --predict: onnx runs OUTPUT_PATH/" + ONNX + " with onnxruntime only")
    p.add_argument("--n-viz", type=int, default=3, help="heatmap figures per group (TP, FP, FN)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a classifier checkpoint exists")
    p.add_argument("--stop-after", type=int, default=None, metavar="E",
                   help="stop after E epochs of this invocation; run again to continue")
    return add_config_args(p)


def variant_of(args):
    return "linear_probe" if args.linear_probe else "from_scratch" if args.from_scratch else "finetune"


def suffixed(name, variant):
    if variant == "finetune":
        return name
    stem, ext = os.path.splitext(name)
    return f"{stem}_{variant}{ext}"


# ---- optimisation ------------------------------------------------------------------------------------

def layer_decay_groups(model, base_lr, decay, weight_decay, train_encoder=True):
    """Parameter groups with layer-wise lr decay: head at base_lr, block i of D at base_lr * decay**(D - i),
    embeddings at base_lr * decay**(D + 1). No weight decay on biases, norms and tokens."""
    depth = len(model.encoder.blocks)
    groups = {}
    for name, p in model.named_parameters():
        if name.startswith("encoder."):
            if not train_encoder:
                p.requires_grad_(False)
                continue
            if name.startswith("encoder.blocks."):
                layer = int(name.split(".")[2]) + 1
            elif name.startswith("encoder.norm"):
                layer = depth
            else:  # patch_embed, cls_token
                layer = 0
            scale = decay ** (depth + 1 - layer)
        else:
            scale = 1.0
        no_wd = p.ndim <= 1 or name.endswith("token")
        key = (scale, no_wd)
        g = groups.setdefault(key, {"params": [], "lr_scale": scale, "weight_decay": 0.0 if no_wd else weight_decay})
        g["params"].append(p)
    return list(groups.values())


# ---- metrics -----------------------------------------------------------------------------------------

def binary_metrics(probs, labels, threshold):
    """AUROC, accuracy, sensitivity, specificity, F1 and the confusion matrix [[TN, FP], [FN, TP]]."""
    from sklearn.metrics import roc_auc_score
    probs, labels = np.asarray(probs, float), np.asarray(labels).astype(int)
    pred = (probs >= threshold).astype(int)
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())

    def ratio(a, b):
        return a / b if b else float("nan")
    auroc = float(roc_auc_score(labels, probs)) if len(set(labels.tolist())) == 2 else float("nan")
    return {"auroc": auroc, "accuracy": ratio(tp + tn, len(labels)), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn), "threshold": threshold,
            "confusion_matrix": [[tn, fp], [fn, tp]], "n": len(labels), "n_positive": int(labels.sum())}


def attention_rollout(attentions):
    """Abnar & Zuidema (2020): average heads, add the residual (0.5 A + 0.5 I), renormalise rows, and
    multiply through the blocks. attentions: list of (B, H, N, N) -> (B, N, N)."""
    import torch
    result = None
    for a in attentions:
        a = a.float().mean(dim=1)  # (B, N, N)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def attention_relevance(attentions, grads):
    """Chefer, Gur & Wolf (2021): each block's attention weighted by the logit's gradient with respect to
    it, negative evidence dropped, heads averaged, then carried through the residual stream: R = I, then
    R <- R + mean_h((dA * A)+) @ R block by block. attentions, grads: lists of (B, H, N, N) -> (B, N, N).
    Unlike raw attention it says where the evidence *for this logit* is, not only where CLS looks."""
    import torch
    result = None
    for a, g in zip(attentions, grads):
        cam = (g.float() * a.float()).clamp(min=0).mean(dim=1)  # (B, N, N)
        result = torch.eye(cam.shape[-1], device=cam.device) + cam if result is None else result + cam @ result
    return result


def on_grid(cls_attention, keep, valid, grid):
    """CLS attention over the encoded tokens (B, K) -> (B, grid, grid), zero on patches not encoded."""
    import torch
    if valid is not None:
        cls_attention = cls_attention * valid
    out = torch.zeros(cls_attention.shape[0], grid * grid, dtype=cls_attention.dtype, device=cls_attention.device)
    return out.scatter(1, keep, cls_attention).reshape(-1, grid, grid)


def last_block_map(attentions, keep, valid, grid):
    """The last block's CLS-to-patch attention, heads averaged, on the grid. The exported ONNX classifier
    computes this map in its graph."""
    return on_grid(attentions[-1].float().mean(dim=1)[:, 0, 1:], keep, valid, grid)


def cls_maps(attentions, keep, valid, grid, grads=None):
    """CLS-to-patch maps on the patch grid, (B, grid, grid) each: the last block's attention, the rollout,
    and with the logit's gradients (grads, one per block) the gradient-weighted relevance."""
    roll = attention_rollout(attentions)[:, 0, 1:]  # (B, K)
    maps = {"last_block": last_block_map(attentions, keep, valid, grid), "rollout": on_grid(roll, keep, valid, grid)}
    if grads is not None:
        maps["relevance"] = on_grid(attention_relevance(attentions, grads)[:, 0, 1:], keep, valid, grid)
    return maps


def upsample_heatmaps(maps, size):
    """(B, g, g) numpy maps -> (B, size, size), bilinear, non-negative, each summing to 1."""
    from skimage.transform import resize
    out = np.stack([resize(np.asarray(m, np.float64), (size, size), order=1, mode="edge", anti_aliasing=False)
                    for m in maps]).clip(min=0)
    return out / np.maximum(out.sum(axis=(1, 2), keepdims=True), 1e-12)


def localization(heat, tumor):
    """Share of heatmap mass inside the tumor and pointing-game hits, per image. heat, tumor (B, H, W)."""
    tumor = np.asarray(tumor, bool)
    mass = (heat * tumor).sum(axis=(1, 2))
    peak = heat.reshape(len(heat), -1).argmax(1)
    hit = tumor.reshape(len(tumor), -1)[np.arange(len(tumor)), peak].astype(float)
    return mass, hit


# ---- training ----------------------------------------------------------------------------------------

def predict_all(model, images, device, amp, batch=32, with_attention=False):
    """-> probabilities (N,) numpy, and with_attention: {"last_block"|"rollout"|"relevance": (N, S, S)
    heatmaps} (relevance needs the gradient: one backward pass per batch)."""
    import torch
    from dataset import batches
    from models import autocast
    model.eval()
    probs, maps = [], {"last_block": [], "rollout": [], "relevance": []}
    for idx in batches(len(images), batch):
        x = images[idx].to(device)
        with torch.set_grad_enabled(with_attention), autocast(device, amp):
            if with_attention:
                logits, atts, keep, valid = model.forward_with_attention(x, "all")
                # a slice's logit depends on its own tokens only: the sum's gradient is each one's own
                grads = torch.autograd.grad(logits.float().sum(), atts)
                with torch.no_grad():
                    for k, v in cls_maps(atts, keep, valid, model.encoder.grid, grads).items():
                        maps[k].append(v.float().cpu().numpy())
            else:
                logits = model(x)
        probs.append(torch.sigmoid(logits.detach().float()).cpu().numpy())
    probs = np.concatenate(probs)
    if not with_attention:
        return probs
    size = images.shape[-1]
    return probs, {k: upsample_heatmaps(np.concatenate(v), size) for k, v in maps.items()}


def train_classifier(model, train_set, val_set, cfg, device, variant, out_dir, resume=True, stop_after=None,
                     dist=None, *, learned_from):
    """Fine-tunes (or probes) with AdamW, warm-up + cosine, layer-wise decay and a class-balanced loss.
    Under torchrun each process takes its share of every global batch (train.Distributed); rank 0 writes.
    learned_from: fields every checkpoint carries (dataset.split_record: the subjects it learned from)."""
    import torch
    import torch.nn.functional as F
    from dataset import batches, refuse_other_split
    from models import autocast, load_checkpoint, save_checkpoint
    from train import Distributed, epoch_generator, local_batch, lr_at, steps_in_epoch, take_step
    dist = dist or Distributed()
    say = dist.say
    ckpt_path = os.path.join(out_dir, suffixed("classifier_checkpoint.pth", variant))
    best_path = os.path.join(out_dir, suffixed(BEST, variant))
    groups = layer_decay_groups(model, cfg.CLS_LR, cfg.LAYER_DECAY, cfg.CLS_WEIGHT_DECAY,
                                train_encoder=(variant != "linear_probe"))
    base_lr = cfg.CLS_LR * cfg.BATCH_SIZE / 16
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999))
    n_pos = float(train_set.labels.sum())
    n_neg = len(train_set) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MiramError(f"the training split has {int(n_pos)} tumor and {int(n_neg)} tumor-free images: "
                         "classification needs both (check the MASK/ folder)")
    pos_weight = torch.tensor(n_neg / n_pos, device=device)  # class balance
    start, best_auc, history = 0, -1.0, []
    if not resume and dist.main:
        for stale in (ckpt_path, best_path):
            if os.path.exists(stale):
                os.remove(stale)
    if resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path, kind="classifier", expected=model.cfg, map_location=device)
        if state.get("variant") != variant:
            raise MiramError(f"{ckpt_path}: belongs to variant {state.get('variant')!r}, not {variant!r}")
        refuse_other_split(state, learned_from, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_auc, history = state["epoch"], state["metrics"]["best_auroc"], json.loads(state["history"])
        say(f"resuming {variant} from {ckpt_path} after epoch {start}")
    net = dist.wrap(model, device)
    global_batch = cfg.BATCH_SIZE * dist.world
    steps_per_epoch = steps_in_epoch(len(train_set), cfg.BATCH_SIZE, dist.world)
    if steps_per_epoch == 0:
        raise MiramError(f"{len(train_set)} labelled training slices are fewer than one global batch ({global_batch})")
    base_lr = base_lr * dist.world  # linear scaling with the global batch
    total, warm = cfg.CLS_EPOCHS * steps_per_epoch, cfg.CLS_WARMUP_EPOCHS * steps_per_epoch
    end = cfg.CLS_EPOCHS if stop_after is None else min(cfg.CLS_EPOCHS, start + stop_after)
    for epoch in range(start, end):
        t0 = time.time()
        torch.manual_seed(cfg.SEED * 100003 + epoch)  # dropout: a resumed run replays the same draws
        model.train()
        if variant == "linear_probe":
            model.encoder.eval()  # frozen: no dropout/stat changes in the encoder
        gen = epoch_generator(cfg.SEED + 1, epoch)
        step, sums = epoch * steps_per_epoch, [0.0, 0.0]
        for gidx in batches(len(train_set), global_batch, gen, drop_last=dist.enabled):
            x, mine = local_batch(train_set.images, gidx, gen, dist, cfg.BATCH_SIZE, device)
            idx = gidx[mine]
            y = train_set.labels[idx].to(device)
            with autocast(device, cfg.AMP):
                logits = net(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=pos_weight)
            take_step(optimizer, loss, lr_at(step, total, warm, base_lr, 0.0),
                      f"non-finite loss at classification epoch {epoch + 1}: lower CLS_LR")
            step += 1
            sums[0] += loss.item() * len(idx)
            sums[1] += len(idx)
        loss_sum, seen = dist.sum(sums)
        probs = predict_all(model, val_set.images, device, cfg.AMP)
        m = binary_metrics(probs, val_set.labels.numpy(), cfg.CLS_THRESHOLD)
        is_best = not (m["auroc"] <= best_auc)  # nan AUROC (one class in validation) still saves
        best_auc = m["auroc"] if is_best else best_auc
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "val_auroc": m["auroc"],
                        "val_accuracy": m["accuracy"], "seconds": round(time.time() - t0, 2)})
        extra = {"variant": variant, "history": json.dumps(history), **learned_from}
        if dist.main:
            if is_best:
                save_checkpoint(best_path, model, "classifier", epoch=epoch + 1, metrics=m, extra=extra)
            save_checkpoint(ckpt_path, model, "classifier", optimizer=optimizer, epoch=epoch + 1,
                            metrics={"best_auroc": best_auc}, extra=extra)
        say(f"[{variant}] epoch {epoch + 1:>3}/{cfg.CLS_EPOCHS}  loss {history[-1]['train_loss']:.4f}  "
              f"val AUROC {m['auroc']:.3f}  acc {m['accuracy']:.3f}  {history[-1]['seconds']:.1f}s"
              f"{'  *best' if is_best else ''}", flush=True)
    return best_path, history


# ---- figures -----------------------------------------------------------------------------------------

def save_heatmap_figure(path, image, heats, prob, tumor=None, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    titles = {"last_block": "last block CLS attention", "rollout": "attention rollout",
              "relevance": "gradient-weighted relevance"}
    panels = [("image", None)] + [(titles[k], heats[k]) for k in titles if k in heats]  # onnx: last block only
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


def report(model, val_set, cfg, device, variant, out_dir, n_viz):
    probs, heats = predict_all(model, val_set.images, device, cfg.AMP, with_attention=True)
    labels = val_set.labels.numpy()
    m = binary_metrics(probs, labels, cfg.CLS_THRESHOLD)
    pos = labels > 0
    tumor = val_set.masks[:, 0].numpy() & pos[:, None, None]
    loc = {}
    for name, h in heats.items():
        if not pos.any():
            loc[name] = {}
            continue
        mass, hit = localization(h[pos], tumor[pos])
        share = tumor[pos].mean(axis=(1, 2))
        loc[name] = {"mass_inside": float(mass.mean()), "pointing_game": float(hit.mean()),
                     "tumor_share_of_image": float(share.mean()),
                     "mass_inside_over_share": float((mass / np.maximum(share, 1e-12)).mean()),
                     # a few slices with most of the mass inside lift the mean: the median is the typical slice
                     "mass_inside_over_share_median": float(np.median(mass / np.maximum(share, 1e-12)))}
    m["localization"] = loc
    m["variant"] = variant
    m["n_val_subjects"] = len(set(val_set.subjects))
    pred = probs >= cfg.CLS_THRESHOLD
    groups = {"tp": pred & pos, "fp": pred & ~pos, "fn": ~pred & pos}
    written = []
    for gname, sel in groups.items():
        for k, i in enumerate(np.nonzero(sel)[0][:n_viz].tolist()):
            path = os.path.join(out_dir, f"tumor_viz_{gname}_{k}{'' if variant == 'finetune' else '_' + variant}.png")
            save_heatmap_figure(path, val_set.images[i, 0].numpy(), {n: h[i] for n, h in heats.items()},
                                float(probs[i]), tumor[i], f"{gname.upper()} {val_set.names[i]}")
            written.append(path)
    return m, written


# ---- entry points ------------------------------------------------------------------------------------

def predict_one(args, cfg):
    """Probability and heatmaps for one image, from the best classifier (torch) or its ONNX export."""
    raw = read_image(args.predict)
    if args.backend == "onnx":
        from export_deploy import OnnxClassifier
        runner = OnnxClassifier(args.checkpoint or os.path.join(cfg.OUTPUT_PATH, ONNX))
        size = runner.model_config["img_size"]
        x = fit_to_square(normalize_intensity(raw)[0], size)[None, None]
        prob, maps = runner(x)
        heats = {k: upsample_heatmaps(v, size) for k, v in maps.items()}
    else:
        import torch
        from models import build_from_checkpoint, pick_device
        device = pick_device(cfg.DEVICE)
        model, _ = build_from_checkpoint(args.checkpoint or os.path.join(cfg.OUTPUT_PATH, BEST), "classifier",
                                         map_location=device)
        x = fit_to_square(normalize_intensity(raw)[0], model.cfg.img_size)[None, None]
        prob, heats = predict_all(model.to(device), torch.from_numpy(x), device, False, with_attention=True)
    prob = float(prob[0])
    stem = os.path.splitext(os.path.basename(args.predict))[0]
    os.makedirs(cfg.OUTPUT_PATH, exist_ok=True)
    out = os.path.join(cfg.OUTPUT_PATH, f"tumor_viz_predict_{stem}.png")
    save_heatmap_figure(out, x[0, 0], {k: v[0] for k, v in heats.items()}, prob, None, os.path.basename(args.predict))
    verdict = "tumor" if prob >= cfg.CLS_THRESHOLD else "no tumor"
    print(f"{args.predict}: p(tumor) = {prob:.4f} -> {verdict} (threshold {cfg.CLS_THRESHOLD}, {args.backend})"
          f"\nheatmap: {out}")
    return {"probability": prob, "heatmap": out, "heatmaps": heats}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    if args.predict:
        return predict_one(args, cfg)
    from train import Distributed
    with Distributed(cfg.DEVICE) as dist:
        return finetune(args, cfg, dist)


def finetune(args, cfg, dist):
    import torch
    from dataset import load_split, split_record
    from models import (TumorClassifier, build_from_checkpoint, load_checkpoint, model_config_from, resolve_amp,
                        tune_for)
    say = dist.say
    say(describe(cfg, dist.world))
    torch.manual_seed(cfg.SEED)
    device = dist.device(cfg.DEVICE)
    cfg.AMP = resolve_amp(device, cfg.AMP, say)
    variant = variant_of(args)
    out_dir = cfg.OUTPUT_PATH
    os.makedirs(out_dir, exist_ok=True)
    if variant == "from_scratch":
        model_cfg = cfg.model_config()
        model = TumorClassifier(model_cfg)
        source = "random initialisation"
        parents = []
    else:
        mae_path = args.checkpoint or os.path.join(out_dir, "best_miram_mae.pth")
        state = load_checkpoint(mae_path, kind="mae")
        # the encoder's architecture from the checkpoint; which patches it reads is this run's setting
        model_cfg = dataclasses.replace(model_config_from(state), foreground_threshold=cfg.FOREGROUND_THRESHOLD)
        model = TumorClassifier(model_cfg)
        encoder_state = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
        model.encoder.load_state_dict(encoder_state)  # strict: every encoder key must match
        source = f"{mae_path} (epoch {state.get('epoch')})"
        parents = [(mae_path, state)]
    cfg.IMG_SIZE = model_cfg.img_size
    model = tune_for(model.to(device), device, cfg.AMP)
    train_set, val_set = load_split(cfg, quiet=not dist.main, trained_on=parents)
    learned_from = split_record(cfg, train_set, *(parent for _, parent in parents))
    # only slices with a mask file carry a label; the others were for pre-training
    train_set = train_set.subset([i for i in range(len(train_set)) if train_set.has_mask[i]])
    val_set = val_set.subset([i for i in range(len(val_set)) if val_set.has_mask[i]])
    if len(train_set) == 0 or len(val_set) == 0:
        raise MiramError("classification needs masks (MASK/ folder, same file names as HR/) on both sides of the "
                         f"split; found {len(train_set)} training and {len(val_set)} validation slices with masks")
    say(f"{variant}: encoder from {source}; {len(train_set)} training ({int(train_set.labels.sum())} tumor) / "
          f"{len(val_set)} validation ({int(val_set.labels.sum())} tumor) slices, subjects disjoint")
    best_path, history = train_classifier(model, train_set, val_set, cfg, device, variant, out_dir,
                                          resume=not args.no_resume, stop_after=args.stop_after, dist=dist,
                                          learned_from=learned_from)
    dist.barrier()
    if not dist.main:
        return {}
    best, _ = build_from_checkpoint(best_path, "classifier", map_location=device)
    metrics, figures = report(best.to(device), val_set, cfg, device, variant, out_dir, args.n_viz)
    metrics["history"] = history
    metrics["checkpoint"] = os.path.abspath(best_path)
    json_path = os.path.join(out_dir, suffixed("classification_metrics.json", variant))
    with open(json_path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(json_path + ".tmp", json_path)
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
    print("wrote\n  " + "\n  ".join([best_path, json_path, *figures]))
    return metrics


if __name__ == "__main__":
    run_cli(main)

"""The CNN a user would otherwise train: a ResNet-18 (timm, one input channel) from scratch on the classifier's
split, labels, image size, augmentation, epochs and batch, its best epoch picked by the same rule (the lowest
class-balanced validation log loss). The comparison the real-data runs report beside MIRAM's classifier.

    python bench/cnn_baseline.py --json outputs/real/br35h/runs/resnet18_100/classification_metrics.json
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import add_config_args, load_config  # noqa: E402
from records import save_json  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser("ResNet-18 from scratch on the classifier's data")
    p.add_argument("--json", required=True, help="where the metrics go")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW rate for a batch of 16 (a ResNet's usual)")
    return add_config_args(p, "classify")


def evaluate(model, images, device, batch=64):
    import torch
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(images[s:s + batch].to(device)).float()[:, 0]).cpu()
                          for s in range(0, len(images), batch)]).numpy()


def main(argv=None):
    import numpy as np
    import timm
    import torch
    import torch.nn.functional as F

    from augment import local_images
    from dataset import load_split
    from runtime import binary_metrics
    from tumor import balanced_log_loss, operating_threshold
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    torch.manual_seed(cfg.SEED)
    device = torch.device("cpu")
    train_set, val_set = load_split(cfg, quiet=True)
    train_set = train_set.labelled().subject_fraction(cfg.CLS_LABEL_FRACTION, cfg.SPLIT_SEED)
    val_set = val_set.labelled()
    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=1).to(device)
    steps_per_epoch = math.ceil(len(train_set) / cfg.BATCH_SIZE)
    total, warmup = cfg.CLS_EPOCHS * steps_per_epoch, cfg.CLS_WARMUP_EPOCHS * steps_per_epoch
    lr = args.lr * cfg.BATCH_SIZE / 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.CLS_WEIGHT_DECAY)
    n_pos = float(train_set.labels.sum())
    pos_weight = torch.tensor((len(train_set) - n_pos) / n_pos)
    gen = torch.Generator().manual_seed(cfg.SEED + 1)
    labels = val_set.labels.numpy()
    best, history, step, start = None, [], 0, time.time()
    for epoch in range(cfg.CLS_EPOCHS):
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        t0, losses = time.time(), []
        for s in range(0, len(order) - cfg.BATCH_SIZE + 1, cfg.BATCH_SIZE):
            gidx = order[s:s + cfg.BATCH_SIZE]
            x = local_images(train_set.images, gidx, slice(None), gen, device, cfg.AUGMENT)
            scale = step / max(1, warmup) if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], train_set.labels[gidx], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        probs = evaluate(model, val_set.images, device)
        m = {**binary_metrics(probs, labels, cfg.CLS_THRESHOLD), "loss": balanced_log_loss(probs, labels)}
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": m["loss"],
                        "auroc": m["auroc"], "seconds": round(time.time() - t0, 1)})
        print(f"[resnet18] epoch {epoch + 1}/{cfg.CLS_EPOCHS} train loss {history[-1]['train_loss']:.4f} val loss "
              f"{m['loss']:.4f} AUROC {m['auroc']:.3f} {history[-1]['seconds']}s", flush=True)
        if best is None or m["loss"] < best[0]["loss"]:
            best = (m, probs)
    metrics, probs = best
    chosen = operating_threshold(probs, labels)
    metrics.update(variant="resnet18", label_fraction=cfg.CLS_LABEL_FRACTION, n_train_slices=len(train_set),
                   n_val_subjects=len(set(val_set.subjects)), history=history, optimizer_steps=step,
                   parameters=sum(p.numel() for p in model.parameters()), seconds=round(time.time() - start, 1),
                   operating_point={"threshold": chosen})
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    save_json(args.json, metrics)
    print(f"[resnet18] best epoch: AUROC {metrics['auroc']:.3f} accuracy {metrics['accuracy']:.3f} -> {args.json}")
    return metrics


if __name__ == "__main__":
    main()

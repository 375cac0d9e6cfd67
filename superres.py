"""Twice the in-plane resolution: the fine-tune's task and data (train.py --superres), and the tiled
enlargement of a slice of any size that enhance.py --mode superres runs (numpy and a model callable).

A slice is learned from and enlarged at its own pixel scale, in IMG_SIZE tiles: the detail to restore is
that of the scan's pixels, which a slice shrunk to IMG_SIZE (as the other phases read it) would have lost.
Training examples are crops of the training slices, each degraded as a coarser acquisition would give it
(degradations.py) and enlarged again by bicubic interpolation; the model (models.SuperResMIRAM) learns the
residual between that interpolation and the crop. `--from-scratch` trains the same network without the
pre-trained weights: what pre-training is worth here.
"""
import math
import os
import time

import numpy as np

from degradations import upsample

FACTOR = 2          # the enlargement each way
HEAD = 0.1          # pixels above this ([0, 1] scale) are the head, where the figures are measured
SSIM_WEIGHT = 0.05  # the loss adds this much of (1 - SSIM) to the MSE, as the inpainting fine-tune's


# ---- enlarging a slice -------------------------------------------------------------------------------

def tile_starts(n, size, step):
    """Tile origins covering 0..n with tiles of `size` every `step` pixels, the last flush with the end."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size, step))
    return starts + [n - size]


def blend_window(size, overlap):
    """A tile's weight (size, size): 1 inside, ramping down over `overlap` pixels at each edge (never 0)."""
    ramp = np.minimum(1.0, (np.arange(size) + 0.5) / max(overlap, 1))
    w = np.minimum(ramp, ramp[::-1])
    return np.outer(w, w)


def enlarge(correct, img, size, overlap=16, batch=8):
    """img (H, W) in [0, 1] -> (2H, 2W): the bicubic enlargement, corrected tile by tile by correct(tiles
    (B, 1, size, size) float32) -> (B, 1, size, size), the overlapping tiles blended. An enlargement smaller
    than a tile is padded with zeros (the background) and cut back."""
    up = upsample(np.asarray(img, np.float64), FACTOR)
    H, W = up.shape
    padded = np.pad(up, ((0, max(0, size - H)), (0, max(0, size - W))))
    step = size - overlap
    origins = [(y, x) for y in tile_starts(padded.shape[0], size, step) for x in tile_starts(padded.shape[1], size, step)]
    out, weight = np.zeros(padded.shape), np.zeros(padded.shape)
    window = blend_window(size, overlap)
    for s in range(0, len(origins), batch):
        group = origins[s:s + batch]
        tiles = np.stack([padded[y:y + size, x:x + size] for y, x in group])[:, None].astype(np.float32)
        for (y, x), t in zip(group, correct(tiles)[:, 0]):
            out[y:y + size, x:x + size] += t * window
            weight[y:y + size, x:x + size] += window
    return (out / weight)[:H, :W]


def enlarge_slices(correct, slices, size):
    """slices (S, H, W) in a scan's own units -> (S, 2H, 2W) in the same units: each slice scaled as training
    scales it (robust percentiles, not clipped, so the mapping back is exact), enlarged, scaled back."""
    from restoration import scale_of
    out = []
    for s in slices:
        lo, hi = scale_of(s)
        out.append(enlarge(correct, (s - lo) / (hi - lo), size) * (hi - lo) + lo)
    return np.stack(out)


def psnr_inside(pred, target, inside=...):
    """PSNR ([0, 1] scale) over the pixels `inside` selects (a boolean mask; every pixel by default), pooled."""
    mse = float(((np.clip(pred, 0, 1) - target) ** 2)[inside].mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def head_psnr(pred, target):
    """PSNR ([0, 1] scale) over the head pixels of every image, pooled: (N, 1, S, S) arrays."""
    return psnr_inside(pred, target, target > HEAD)


# ---- no anatomy where there is none --------------------------------------------------------------------

def phantoms(size):
    """Images without anatomy, {name: (size, size) in [0, 1]}: a constant grey, and a geometric phantom of
    discs of several sizes and contrasts over a ramp, with stripes two to eight pixels wide."""
    yy, xx = np.mgrid[:size, :size] / size
    phantom = 0.2 + 0.3 * xx
    for cy, cx, r, level in ((0.3, 0.3, 0.18, 0.9), (0.3, 0.72, 0.1, 0.05), (0.7, 0.3, 0.06, 0.6), (0.72, 0.7, 0.03, 1.0)):
        phantom[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = level
    band = (yy > 0.88) & (yy < 0.97)
    for k, width in enumerate((2, 4, 8)):
        columns = (xx * size) // width % 2 == 0
        phantom[band & columns & (xx > k / 3) & (xx < (k + 1) / 3)] = 0.8
    return {"constant": np.full((size, size), 0.5), "phantom": phantom}


def phantom_scores(correct, size):
    """Each phantom degraded by each kind (degradations.DEGRADATIONS, no noise), enlarged back by correct (the
    model, tiled) and by bicubic interpolation alone: {phantom: {kind: {"psnr", "psnr_bicubic", "max_abs_change"}}}
    over the whole image. A model that paints brain into such images scores below bicubic there."""
    from degradations import DEGRADATIONS, degrade
    out = {}
    for name, truth in phantoms(2 * size).items():
        out[name] = {}
        for kind in DEGRADATIONS:
            low = degrade(truth, kind, FACTOR)
            ours, bicubic = enlarge(correct, low, size), upsample(low, FACTOR)
            out[name][kind] = {"psnr": psnr_inside(ours, truth), "psnr_bicubic": psnr_inside(bicubic, truth),
                               "max_abs_change": float(np.abs(ours - bicubic).max())}
    return out


# ---- the fine-tune ------------------------------------------------------------------------------------

def examples(cfg, data_set, crops, seed):
    """Training pairs (degradations.training_pairs) from the slices of a SliceSet at their own size, scaled to
    [0, 1] as training scales them."""
    from dataset import native_slices, resolve_data_path
    from degradations import training_pairs
    from imaging import normalize_intensity
    slices = [normalize_intensity(img)[0] for img, _ in native_slices(resolve_data_path(cfg, quiet=True),
                                                                      data_set.names, cfg)]
    return training_pairs(slices, crops, cfg.IMG_SIZE, seed, FACTOR)


def make_task(cfg, train_pairs, val_pairs, device, learned_from, variant):
    """SuperResFinetune, built here so that torch is imported by the phase that trains only."""
    import torch

    from engine import Task
    from losses import ssim

    class SuperResFinetune(Task):
        """SuperResMIRAM on fixed degraded crops of the training slices (SUPERRES_CROPS a slice, drawn once
        from SEED), validated on two crops a validation slice against the bicubic enlargement it corrects."""
        name, kind = "superres", "superres"
        lr_setting = "SUPERRES_LR"
        seed_offset = 3
        shown = ("loss_bicubic",)
        must_match = ("variant",)

        def __init__(self):
            self.cfg, self.device, self.variant = cfg, device, variant
            self.train_data = tuple(map(torch.from_numpy, train_pairs))
            self.val_data = tuple(map(torch.from_numpy, val_pairs))
            self.epochs, self.lr, self.warmup_epochs = cfg.SUPERRES_EPOCHS, cfg.SUPERRES_LR, 1
            self.weight_decay, self.n_train = cfg.WEIGHT_DECAY, len(train_pairs[0])
            suffix = "" if variant == "finetune" else "_" + variant
            self.checkpoint, self.best = cfg.artifact("superres_checkpoint", suffix), cfg.artifact("superres", suffix)
            self.log = cfg.artifact("superres_log", suffix)
            self.extra = {**learned_from, "variant": variant}

        def lr_scale(self, name):
            return 1.0 if name.startswith("mae.") else 10.0  # the new head learns faster

        def batch(self, gidx, mine, gen):
            flip = torch.rand(len(gidx), generator=gen) < 0.5
            idx, flip = gidx[mine], flip[mine]
            return tuple(torch.where(flip[:, None, None, None], a[idx].flip(-1), a[idx]).to(self.device)
                         for a in self.train_data)

        def forward(self, net, batch):
            return net(batch[0]).float()

        def loss(self, out, batch):
            loss = ((out - batch[1]) ** 2).mean() + SSIM_WEIGHT * (1 - ssim(out, batch[1], dtype=out.dtype)).mean()
            return loss, {"loss": loss.item()}

        @torch.no_grad()
        def validate(self, model):
            pred = predict(model, self.val_data[0], self.device)
            target = self.val_data[1].numpy()
            return {"loss": float(((pred - target) ** 2).mean()),
                    "loss_bicubic": float(((self.val_data[0].numpy() - target) ** 2).mean())}
    return SuperResFinetune()


def predict(model, inputs, device, batch=32):
    """The model on (N, 1, S, S) float32 tensors -> numpy (N, 1, S, S)."""
    import torch
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(inputs[s:s + batch].to(device)).float().cpu().numpy()
                               for s in range(0, len(inputs), batch)])


def finetune(args, cfg, dist):
    """train.py --superres [--from-scratch]: the fine-tune, then its figures on the validation crops."""
    import torch

    from checkpoint import build_from_checkpoint, check_weights_fit, load_checkpoint, model_config_from
    from config import describe
    from dataset import load_split
    from engine import fit
    from hardware import apply_kernels, choose_kernels
    from models import SuperResMIRAM
    from records import run_info, save_json
    from splits import split_record
    device = dist.device(cfg.DEVICE)
    variant = "from_scratch" if args.from_scratch else "finetune"
    mae_path, mae_state, parents = cfg.artifact("mae"), None, ()
    if variant == "finetune":
        mae_state = load_checkpoint(mae_path, kind="mae")
        model_cfg = model_config_from(mae_state, mae_path)
        check_weights_fit(mae_state, "mae", model_cfg, mae_path)
        parents = ((mae_path, mae_state),)
    else:
        model_cfg = cfg.model_config()
    kernels = choose_kernels(device, cfg.AMP, model_cfg.embed_dim, cfg.MATMUL, dist.say)
    cfg = cfg.adopt(model_cfg, AMP=kernels.precision == "bf16")
    dist.say(describe(cfg, dist.world, "train") + "\n" + kernels.line())
    torch.manual_seed(cfg.SEED)
    train_set, val_set = load_split(cfg, quiet=not dist.main, trained_on=parents)
    t0 = time.time()
    train_pairs = examples(cfg, train_set, cfg.SUPERRES_CROPS, cfg.SEED)
    val_pairs = examples(cfg, val_set, 2, cfg.EVAL_SEED)
    dist.say(f"super-resolution {variant}: {len(train_pairs[0])} training crops ({cfg.SUPERRES_CROPS} a slice), "
             f"{len(val_pairs[0])} validation, {cfg.IMG_SIZE} px at the slices' own scale, degraded in "
             f"{time.time() - t0:.0f}s")
    model = SuperResMIRAM(model_cfg)
    if mae_state is not None:
        model.mae.load_state_dict(mae_state["model"])
    model = apply_kernels(model.to(device), kernels)
    task = make_task(cfg, train_pairs, val_pairs, device, split_record(cfg, train_set, *(s for _, s in parents)),
                     variant)
    task.kernels = kernels.to_dict()
    result = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    if not dist.main or not os.path.isfile(task.best):
        return result
    best, _ = build_from_checkpoint(task.best, "superres", map_location=device)
    pred = predict(best.to(device), task.val_data[0], device)
    metrics = {"variant": variant, "psnr_head": head_psnr(pred, val_pairs[1]),
               "psnr_head_bicubic": head_psnr(val_pairs[0], val_pairs[1]), "n_crops": len(val_pairs[0]),
               "run": {**run_info(), "kernels": task.kernels}}
    metrics["margin_db"] = metrics["psnr_head"] - metrics["psnr_head_bicubic"]
    metrics["phantoms"] = phantom_scores(lambda tiles: predict(best, torch.from_numpy(tiles), device), cfg.IMG_SIZE)
    path = cfg.artifact("superres_metrics", "" if variant == "finetune" else "_" + variant)
    save_json(path, metrics)
    dist.say(f"validation crops, PSNR inside the head: {metrics['psnr_head']:.2f} dB, bicubic "
             f"{metrics['psnr_head_bicubic']:.2f} dB ({metrics['margin_db']:+.2f} dB)\n"
             "images without anatomy, PSNR against bicubic's: " + "; ".join(
                 f"{name} {kind} {m['psnr']:.2f} vs {m['psnr_bicubic']:.2f} dB" for name, kinds in metrics["phantoms"].items()
                 for kind, m in kinds.items()) + "\n  "
             + "\n  ".join([task.best, task.checkpoint, task.log, path]))
    return result

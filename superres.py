"""Twice the in-plane resolution: the fine-tune's task and data (train.py --superres), and the tiled
enlargement of a slice of any size that enhance.py --mode superres runs (numpy and a model callable).

A slice is learned from and enlarged at its own pixel scale, in IMG_SIZE tiles: the detail to restore is
that of the scan's pixels, which a slice shrunk to IMG_SIZE (as the other phases read it) would have lost.
Training examples are crops of the training slices, each degraded as a coarser acquisition would give it
(degradations.py) and enlarged again by bicubic interpolation; the model (upscaler.SuperResMIRAM) learns the
residual between that interpolation and the crop. `--from-scratch` trains the same network without the
pre-trained weights: what pre-training is worth here.
"""
import math
import os

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


def head_ssim(pred, target):
    """SSIM ([0, 1] scale, 7-pixel windows) averaged over the head pixels of one (H, W) image."""
    from skimage.metrics import structural_similarity
    _, full = structural_similarity(target, np.clip(pred, 0, 1), data_range=1.0, full=True)
    return float(full[target > HEAD].mean())


def with_head(slices, count):
    """Up to `count` of the (H, W) [0, 1] slices, evenly spaced, among those at least a tenth head (the end
    slices of a volume, nearly empty, would score the background)."""
    kept = [s for s in slices if (s > HEAD).mean() >= 0.1 and min(s.shape) >= 2 * FACTOR]
    picks = np.unique(np.linspace(0, len(kept) - 1, min(count, len(kept))).round().astype(int)) if kept else []
    return [kept[i] for i in picks]


def held_out_scores(correct, slices, size, count=48):
    """Whole held-out slices at their own pixel scale, each cut to half its resolution by each degradation (no
    noise) and enlarged back by the model (tiled, `correct` as enlarge takes it) and by each classical
    interpolation: {"n_slices", kind: {method: {"psnr", "psnr_std", "ssim", "ssim_std"}}}, inside the head,
    means over slices; and the first slice's images under the first degradation, for the figure."""
    from degradations import DEGRADATIONS, INTERPOLATIONS, degrade
    slices = with_head(slices, count)
    out, example = {"n_slices": len(slices)}, None
    for kind in DEGRADATIONS:
        scores = {}
        for img in slices:
            truth = img[:img.shape[0] // FACTOR * FACTOR, :img.shape[1] // FACTOR * FACTOR]
            low = degrade(truth, kind, FACTOR)
            fills = {"model": enlarge(correct, low, size), **{n: f(low, FACTOR) for n, f in INTERPOLATIONS.items()}}
            for method, pred in fills.items():
                scores.setdefault(method, []).append((psnr_inside(pred, truth, truth > HEAD), head_ssim(pred, truth)))
            if example is None:
                example = {"truth": truth, "low": low, **fills}
        out[kind] = {m: {"psnr": float(np.mean(v[:, 0])), "psnr_std": float(np.std(v[:, 0])),
                         "ssim": float(np.mean(v[:, 1])), "ssim_std": float(np.std(v[:, 1]))}
                     for m, v in ((m, np.array(v)) for m, v in scores.items())}
    return out, example


def margins(scores):
    """From held_out_scores: the model's PSNR over bicubic's (dB) and its SSIM, averaged over the degradations."""
    from degradations import DEGRADATIONS

    def mean(method, key="psnr"):
        return float(np.mean([scores[k][method][key] for k in DEGRADATIONS]))
    return {"psnr_margin_bicubic_db": mean("model") - mean("bicubic"), "psnr_margin_lanczos_db": mean("model") - mean("lanczos"),
            "psnr": mean("model"), "ssim": mean("model", "ssim")}


def save_figure(example, path, title):
    """A held-out slice: its half-resolution input, bicubic and Lanczos enlargements, the model's and the truth,
    each whole and, below, the same enlarged detail (a quarter of the slice's side around the head's centre)."""
    from records import pyplot
    plt = pyplot()
    truth = example["truth"]
    ys, xs = np.nonzero(truth > HEAD)
    side = max(16, min(truth.shape) // 4)
    cy = int(np.clip(ys.mean() if len(ys) else truth.shape[0] / 2, side / 2, truth.shape[0] - side / 2))
    cx = int(np.clip(xs.mean() if len(xs) else truth.shape[1] / 2, side / 2, truth.shape[1] - side / 2))
    box = (slice(cy - side // 2, cy + side // 2), slice(cx - side // 2, cx + side // 2))
    panels = {"input (half resolution)": np.kron(example["low"], np.ones((FACTOR, FACTOR))), "bicubic": example["bicubic"],
              "Lanczos": example["lanczos"], "MIRAM super-resolution": example["model"], "truth": truth}
    fig, axes = plt.subplots(2, len(panels), figsize=(3 * len(panels), 6.2))
    for col, (name, img) in enumerate(panels.items()):
        score = "" if name == "truth" or name.startswith("input") else \
            f"\n{psnr_inside(img, truth, truth > HEAD):.2f} dB inside the head"
        axes[0, col].imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(name + score, fontsize=9)
        axes[0, col].add_patch(plt.Rectangle((box[1].start, box[0].start), side, side, fill=False, color="yellow"))
        axes[1, col].imshow(np.clip(img[box], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[:, col]:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- no anatomy where there is none --------------------------------------------------------------------

STRIPE_WIDTHS = (2, 4, 8)  # the phantom's stripes, pixels wide: 2 is the finest a half-resolution input can show


def phantoms(size):
    """Images without anatomy, {name: (size, size) in [0, 1]}: a constant grey, and a geometric phantom of
    discs of several sizes and contrasts over a ramp, with stripes two to eight pixels wide."""
    return {name: image for name, (image, _) in phantom_regions(size).items()}


def phantom_regions(size):
    """{name: (image, {region: boolean mask})}: the phantoms of phantoms() and the parts each is scored on
    (the phantom's discs and ramp apart from each stripe width)."""
    yy, xx = np.mgrid[:size, :size] / size
    phantom = 0.2 + 0.3 * xx
    for cy, cx, r, level in ((0.3, 0.3, 0.18, 0.9), (0.3, 0.72, 0.1, 0.05), (0.7, 0.3, 0.06, 0.6), (0.72, 0.7, 0.03, 1.0)):
        phantom[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = level
    band = (yy > 0.88) & (yy < 0.97)
    regions = {"discs and ramp": ~band}
    for k, width in enumerate(STRIPE_WIDTHS):
        part = band & (xx > k / 3) & (xx < (k + 1) / 3)
        phantom[part & ((xx * size) // width % 2 == 0)] = 0.8
        regions[f"stripes {width} px"] = part
    every = np.ones((size, size), bool)
    return {"constant": (np.full((size, size), 0.5), {"all": every}), "phantom": (phantom, {"all": every, **regions})}


def phantom_scores(correct, size):
    """Each phantom degraded by each kind (degradations.DEGRADATIONS, no noise), enlarged back by correct (the
    model, tiled) and by bicubic interpolation alone: {phantom: {kind: {"psnr", "psnr_bicubic", "max_abs_change",
    "regions": {region: {"psnr", "psnr_bicubic"}}}}}. A model that paints brain into such images scores below
    bicubic there; stripes as fine as the halved input's pixels are beyond what it can show."""
    from degradations import DEGRADATIONS, degrade
    out = {}
    for name, (truth, regions) in phantom_regions(2 * size).items():
        out[name] = {}
        for kind in DEGRADATIONS:
            low = degrade(truth, kind, FACTOR)
            ours, bicubic = enlarge(correct, low, size), upsample(low, FACTOR)
            out[name][kind] = {"psnr": psnr_inside(ours, truth), "psnr_bicubic": psnr_inside(bicubic, truth),
                               "max_abs_change": float(np.abs(ours - bicubic).max()),
                               "regions": {r: {"psnr": psnr_inside(ours, truth, m), "psnr_bicubic": psnr_inside(bicubic, truth, m)}
                                           for r, m in regions.items() if r != "all"}}
    return out


# ---- its speed -----------------------------------------------------------------------------------------

TIMED_SIDE = 256  # the side of the slice timed enlarged to twice its size (a common clinical matrix)


def time_enlargement(upscaler, onnx_paths, image, threads, iters, warmup, side=TIMED_SIDE):
    """A side-pixel slice (image resized) enlarged twice, whole (interpolation, tiles, blend), by ONNX
    Runtime (each exported variant) and by PyTorch, in turns: {"side", "factor", "tile", backend: percentiles (ms)}."""
    import torch
    from skimage.transform import resize

    from runtime import OnnxUpscaler, bench_group
    img = resize(np.asarray(image, np.float64), (side, side), order=1)
    size = upscaler.cfg.img_size

    @torch.no_grad()
    def torch_tiles(tiles):
        return upscaler(torch.from_numpy(tiles)).numpy()
    runners = {backend: (lambda run: lambda: enlarge(run, img, size))(OnnxUpscaler(path, threads))
               for backend, path in onnx_paths.items()}
    runners["torch-fp32"] = lambda: enlarge(torch_tiles, img, size)
    timed = bench_group(runners, 1, max(5, iters // 4), min(warmup, 2))
    print(f"super-resolution, a {side}x{side} slice to {2 * side}x{2 * side}, {threads} threads: "
          + ", ".join(f"{k} {v['p50_ms']:.0f} ms" for k, v in timed.items()))
    return {"side": side, "factor": FACTOR, "tile": size, **timed}


# ---- the fine-tune ------------------------------------------------------------------------------------

def scaled_slices(cfg, root, names):
    """The named slices of root at their own size, scaled to [0, 1] as training scales them."""
    from dataset import native_slices
    from imaging import normalize_intensity
    return [normalize_intensity(img)[0] for img, _ in native_slices(root, names, cfg)]


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


VARIANTS = {"finetune": "pre-trained MIRAM and the CNN reading its features",
            "from_scratch": "the same network, MIRAM's weights random (what pre-training is worth)",
            "cnn": "the small CNN alone, no MIRAM (the super-resolver a user would otherwise train)"}
HELD_OUT_SLICES = 48  # whole slices a held-out set is scored on


def variant_of(args):
    return "from_scratch" if args.from_scratch else "cnn" if args.cnn else "finetune"


def finetune(args, cfg, dist):
    """train.py --superres [--from-scratch | --cnn]: the fine-tune, then its figures on the held-out slices
    (and the transfer set's, where one is configured) against bicubic and Lanczos interpolation."""
    import dataclasses

    import torch

    from checkpoint import build_from_checkpoint, check_weights_fit, load_checkpoint, model_config_from
    from config import describe
    from dataset import load_split, load_transfer, resolve_data_path
    from degradations import training_pairs
    from engine import fit
    from hardware import apply_kernels, choose_kernels
    from upscaler import SuperResMIRAM
    from records import run_info, save_json, stage
    from splits import split_record
    device = dist.device(cfg.DEVICE)
    variant = variant_of(args)
    mae_path, mae_state, parents = args.checkpoint or cfg.artifact("mae"), None, ()
    if variant == "finetune":
        mae_state = load_checkpoint(mae_path, kind="mae")
        model_cfg = model_config_from(mae_state, mae_path)
        check_weights_fit(mae_state, "mae", model_cfg, mae_path)
        parents = ((mae_path, mae_state),)
    else:
        model_cfg = cfg.model_config()
    model_cfg = dataclasses.replace(model_cfg, superres_features=0 if variant == "cnn" else model_cfg.superres_features)
    kernels = choose_kernels(device, cfg.AMP, model_cfg.embed_dim, cfg.MATMUL, dist.say)
    cfg = cfg.adopt(model_cfg, AMP=kernels.precision == "bf16")
    dist.say(describe(cfg, dist.world, "train") + "\n" + kernels.line())
    torch.manual_seed(cfg.SEED)
    train_set, val_set = load_split(cfg, quiet=not dist.main, trained_on=parents)
    root = resolve_data_path(cfg, quiet=True)
    val_slices = scaled_slices(cfg, root, val_set.names)
    with stage("degraded crops"):
        train_pairs = training_pairs(scaled_slices(cfg, root, train_set.names), cfg.SUPERRES_CROPS, cfg.IMG_SIZE,
                                     cfg.SEED, FACTOR, cfg.SUPERRES_NOISE)
        val_pairs = training_pairs(val_slices, 2, cfg.IMG_SIZE, cfg.EVAL_SEED, FACTOR, cfg.SUPERRES_NOISE)
    dist.say(f"super-resolution, {VARIANTS[variant]}: {len(train_pairs[0])} training crops ({cfg.SUPERRES_CROPS} a "
             f"slice), {len(val_pairs[0])} validation, {cfg.IMG_SIZE} px at the slices' own scale")
    model = SuperResMIRAM(model_cfg)
    if mae_state is not None:
        model.mae.load_state_dict(mae_state["model"])
    model = apply_kernels(model.to(device), kernels)
    task = make_task(cfg, train_pairs, val_pairs, device, split_record(cfg, train_set, *(s for _, s in parents)),
                     variant)
    task.kernels = kernels.to_dict()
    with stage("epochs"):
        result = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    if not dist.main or not os.path.isfile(task.best):
        return result
    best, _ = build_from_checkpoint(task.best, "superres", map_location=device)
    best = best.to(device)
    correct = lambda tiles: predict(best, torch.from_numpy(tiles), device)  # noqa: E731
    suffix = "" if variant == "finetune" else "_" + variant
    metrics = {"variant": variant, "model": VARIANTS[variant], "run": {**run_info(), "kernels": task.kernels},
               "settings": {k: getattr(cfg, k) for k in ("SUPERRES_EPOCHS", "SUPERRES_LR", "SUPERRES_CROPS", "SUPERRES_NOISE", "SEED")},
               "held_out": {}}
    held_out = {"validation": val_slices}
    transfer, transfer_root = load_transfer(cfg, cfg.IMG_SIZE, quiet=True)
    if transfer is not None:
        held_out["transfer"] = scaled_slices(cfg, transfer_root, transfer.names)
    lines = []
    for name, slices in held_out.items():
        with stage(f"held-out {name} slices scored"):
            scores, example = held_out_scores(correct, slices, cfg.IMG_SIZE, HELD_OUT_SLICES)
        if not scores["n_slices"]:
            continue
        metrics["held_out"][name] = {**scores, **margins(scores)}
        m = metrics["held_out"][name]
        lines.append(f"{name} ({scores['n_slices']} whole slices, half resolution by " + " or ".join(
            k for k in scores if k != "n_slices") + f"): PSNR inside the head {m['psnr']:.2f} dB, "
            f"{m['psnr_margin_bicubic_db']:+.2f} dB over bicubic, {m['psnr_margin_lanczos_db']:+.2f} over Lanczos, "
            f"SSIM {m['ssim']:.3f}")
        figure = cfg.artifact("superres_sample", suffix + ("" if name == "validation" else "_" + name))
        save_figure(example, figure, f"{VARIANTS[variant]}: a held-out slice ({name}), 2x each way")
    with stage("images without anatomy"):
        metrics["phantoms"] = phantom_scores(correct, cfg.IMG_SIZE)
    path = cfg.artifact("superres_metrics", suffix)
    save_json(path, metrics)
    dist.say("\n".join(lines) + "\nimages without anatomy, PSNR against bicubic's: " + "; ".join(
        f"{name} {kind} {m['psnr']:.2f} vs {m['psnr_bicubic']:.2f} dB" for name, kinds in metrics["phantoms"].items()
        for kind, m in kinds.items()) + "\n  " + "\n  ".join([task.best, task.checkpoint, task.log, path]))
    return result

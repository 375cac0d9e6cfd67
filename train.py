"""Self-supervised pre-training of MIRAM: `python train.py [--preset demo] [--n-epochs N] ...`

Writes into OUTPUT_PATH: checkpoint.pth (latest, resumable), best_miram_mae.pth (best validation loss),
train_log.jsonl (one JSON line per epoch), loss_curve.png and, with ANATOMY_VARIANTS, anatomy_variants.pt (the
drawn variants, which --inpaint reads back). Restarting into the same OUTPUT_PATH resumes.

`python train.py --inpaint` then fine-tunes the pre-trained MAE to inpaint: the slice with its hole
pre-filled by biharmonic inpainting goes in, the model learns a correction of that fill (InpaintingMIRAM):
inpaint_checkpoint.pth, best_miram_inpaint.pth, inpaint_log.jsonl; enhance.py --mode inpaint uses it.
`python train.py --superres` fine-tunes it to enlarge slices twice (superres.py): best_miram_superres.pth,
superres_checkpoint.pth, superres_log.jsonl, superres_metrics.json; enhance.py --mode superres uses it.

Data-parallel: `torchrun --nproc_per_node=N train.py ...` (NCCL on GPUs, Gloo on CPU). BATCH_SIZE is per
process; the learning rate scales with the global batch. Rank 0 alone writes logs, checkpoints and plots.
"""
import argparse
import dataclasses
import math
import os
import time

import torch

from checkpoint import build_from_checkpoint, check_weights_fit, load_checkpoint, model_config_from
from config import add_config_args, at_least, describe, load_config
from augment import anatomy_variants, local_images, variant_index
from dataset import load_split, load_transfer, resolve_data_path
from splits import split_record
from engine import Distributed, Task, fit
from hardware import apply_kernels, autocast, choose_kernels, matmul_gflops, training_gflop_per_image
from losses import ssim
from models import MIRAM, InpaintingMIRAM, mask_noise
from records import output_lock, pyplot, run_cli, run_info, save_json, save_stages, stage
from restoration import damaged_set, lesion_shapes



def get_args_parser():
    parser = argparse.ArgumentParser("MIRAM self-supervised pre-training", add_help=True)
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if OUTPUT_PATH holds a checkpoint (it is then replaced)")
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument("--inpaint", action="store_true",
                        help="fine-tune the pre-trained MAE (best_miram_mae.pth) to inpaint damaged regions "
                             "instead of pre-training (INPAINT_EPOCHS, INPAINT_LR, INPAINT_COPIES)")
    phase.add_argument("--superres", action="store_true",
                        help="fine-tune the pre-trained MAE to enlarge slices twice (SUPERRES_EPOCHS, SUPERRES_LR, "
                             "SUPERRES_CROPS): what enhance.py --mode superres runs")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--from-scratch", action="store_true",
                         help="with --superres: the same network without the pre-trained weights (the comparison)")
    variant.add_argument("--cnn", action="store_true",
                         help="with --superres: the small CNN alone, without MIRAM (the baseline a user would train)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="with --superres: the pre-trained MAE to start from (default OUTPUT_PATH/best_miram_mae.pth)")
    parser.add_argument("--stop-after", type=at_least(1), default=None, metavar="E",
                        help="stop after E epochs of this invocation (the schedule still spans all epochs); "
                             "run again to continue")
    return add_config_args(parser, "train")


# ---- pre-training ------------------------------------------------------------------------------------

VAL_BATCH = 64  # validation slices per forward pass (at least BATCH_SIZE)


class Pretraining(Task):
    name, kind = "pretrain", "mae"
    lr_setting = "LEARNING_RATE"
    betas = (0.9, 0.95)  # MAE's pre-training betas
    shown = ("loss_fine", "loss_coarse")

    def __init__(self, cfg, model, train_set, val_set, device, learned_from):
        self.cfg, self.model, self.val_set, self.device = cfg, model, val_set, device
        self.epochs, self.lr, self.warmup_epochs = cfg.N_EPOCHS, cfg.LEARNING_RATE, cfg.WARMUP_EPOCHS
        self.min_lr, self.weight_decay = cfg.MIN_LR, cfg.WEIGHT_DECAY
        self.n_train = len(train_set)  # an epoch is one pass over the slices, each as itself or a variant
        self.train_images, _ = anatomy_variants(train_set.images, cfg.ANATOMY_VARIANTS, cfg.SEED,
                                                cache=cfg.artifact("anatomy_variants"))
        self.checkpoint, self.best, self.log = cfg.artifact("checkpoint"), cfg.artifact("mae"), cfg.artifact("train_log")
        self.extra = learned_from
        # validation masks are fixed (EVAL_SEED), so epochs compare like with like
        self.val_noise = mask_noise(len(val_set), model.encoder.num_patches, cfg.EVAL_SEED)

    def batch(self, gidx, mine, gen):
        picked = variant_index(gidx, self.n_train, self.cfg.ANATOMY_VARIANTS, gen)
        imgs = local_images(self.train_images, picked, mine, gen, self.device, self.cfg.AUGMENT,
                            wider=self.cfg.AUGMENT_WIDER)
        noise = mask_noise(len(gidx), self.model.encoder.num_patches, gen)[mine].to(self.device, non_blocking=True)
        return imgs, noise

    def forward(self, net, batch):
        return net(*batch)

    def loss(self, out, batch):
        return out.loss.float(), {"loss": out.loss.item(), "loss_fine": out.loss_fine.item(),
                                  "loss_coarse": out.loss_coarse.item()}

    def validate(self, model):
        sums = {"loss": 0.0, "loss_fine": 0.0, "loss_coarse": 0.0}
        # without gradients a larger batch fits; at the demo's sizes under bf16 it validates 50 slices in
        # 45 ms instead of 61 at the training batch, every epoch
        batch = max(self.cfg.BATCH_SIZE, VAL_BATCH)
        for s in range(0, len(self.val_set), batch):
            imgs = self.val_set.images[s:s + batch].to(self.device)
            with autocast(self.device, self.cfg.AMP):
                out = model(imgs, self.val_noise[s:s + batch].to(self.device))
            for k in sums:
                sums[k] += getattr(out, k).float().item() * len(imgs)
        return {k: v / len(self.val_set) for k, v in sums.items()}


def plot_losses(history, path, lambda_coarse):
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation (fixed masks)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss (fine + {lambda_coarse} coarse)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("MIRAM pre-training")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def pretrain(args, cfg, dist):
    device = dist.device(cfg.DEVICE)
    with stage("kernels chosen"):
        kernels = choose_kernels(device, cfg.AMP, cfg.EMBED_DIM, cfg.MATMUL, dist.say)
    cfg = dataclasses.replace(cfg, AMP=kernels.precision == "bf16")
    dist.say(describe(cfg, dist.world, "train") + "\n" + kernels.line())
    torch.manual_seed(cfg.SEED)
    with stage("data read"):
        if dist.main:
            resolve_data_path(cfg)  # builds the demo set once, before the other processes read it
        dist.barrier()
        train_set, val_set = load_split(cfg, quiet=not dist.main)
    dist.say(f"data: {len(train_set)} training / {len(val_set)} validation slices, "
             f"{len(set(train_set.subjects))} / {len(set(val_set.subjects))} subjects; device {device}, "
             f"{dist.world} process(es)")
    model = apply_kernels(MIRAM(cfg.model_config()).to(device), kernels)
    mc = model.cfg
    dist.say(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
             f"{mc.num_patches} patches, {mc.num_visible} visible")
    with stage("anatomy variants"):
        task = Pretraining(cfg, model, train_set, val_set, device, split_record(cfg, train_set))
    task.kernels = kernels.to_dict()
    if device.type == "cpu":  # how near the machine's matrix-multiply rate a step runs: measured, then logged
        dtype = torch.bfloat16 if cfg.AMP else torch.float32
        with stage("matrix-multiply rate measured"):
            task.kernels.update(matmul_gflops=round(matmul_gflops(torch.get_num_threads(), 1024, 3, dtype), 1),
                                step_gflop_per_image=round(training_gflop_per_image(model, device), 4))
    if device.type == "cuda":  # page-locked: batches copy to the GPU asynchronously
        task.train_images = task.train_images.pin_memory()
    with stage("epochs"):
        result = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    if result["history"] and dist.main:
        with stage("figures"):
            plot_losses(result["history"], cfg.artifact("loss_curve"), cfg.LAMBDA_COARSE)
        if "matmul_gflops" in task.kernels:
            dist.say(matmul_share(task.kernels, result["history"], dist.world, kernels.precision))
    dist.say(f"done: best validation loss {result['best']:.4f}\n  " + "\n  ".join(
        [task.best, task.checkpoint, task.log, cfg.artifact("loss_curve")]))
    return result


def matmul_share(record, history, world, precision):
    """The line saying how near the matrix-multiply rate measured at start the median epoch ran."""
    rate = sorted(h["images_per_s"] for h in history)[len(history) // 2] * world
    share = record["step_gflop_per_image"] * rate / record["matmul_gflops"]
    return (f"a step: {record['step_gflop_per_image']:.2f} GFLOP an image, {rate:.1f} images/s on the median epoch "
            f"(its validation included): {share:.0%} of the {record['matmul_gflops']:.0f} GFLOP/s {precision} matrix "
            "multiply measured at start")


# ---- the inpainting fine-tune ------------------------------------------------------------------------

# The fine-tune's loss adds this much of (1 - SSIM inside the hole) to the hole's MSE: MSE alone learned
# corrections that raised PSNR but lowered SSIM against the biharmonic fill (measured).
INPAINT_SSIM_WEIGHT = 0.05


def hole_mse(pred, target, weight):
    """Mean squared error inside each sample's hole (weight > 0), per sample: averaged over samples, a thin
    stripe counts as much as a large block."""
    hole = (weight > 0).to(pred.dtype)
    return ((pred - target) ** 2 * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3)).clamp(min=1)


def inpainting_loss(pred, target, weight):
    hole = (weight > 0).to(pred.dtype)
    return hole_mse(pred, target, weight) + INPAINT_SSIM_WEIGHT * (1 - ssim(pred, target, weight=hole, dtype=pred.dtype))


class InpaintingFinetune(Task):
    """InpaintingMIRAM from best_miram_mae.pth on synthetic damage (blocks, stripes, blobs) of the training
    slices, INPAINT_COPIES fixed draws per slice; validated on 2 draws per validation slice, against the
    biharmonic fill the model corrects."""
    name, kind = "inpaint", "inpaint"
    lr_setting = "INPAINT_LR"
    seed_offset = 2
    shown = ("loss_biharmonic",)

    def __init__(self, cfg, train_data, val_data, device, learned_from):
        self.cfg, self.train_data, self.val_data, self.device = cfg, train_data, val_data, device
        self.epochs, self.lr, self.warmup_epochs = cfg.INPAINT_EPOCHS, cfg.INPAINT_LR, cfg.INPAINT_WARMUP_EPOCHS
        self.weight_decay = cfg.WEIGHT_DECAY
        self.n_train = len(train_data[0])
        self.checkpoint, self.best = cfg.artifact("inpaint_checkpoint"), cfg.artifact("inpaint")
        self.log = cfg.artifact("inpaint_log")
        self.extra = learned_from
        self.prefill_loss = hole_mse(val_data[0], val_data[2], val_data[1]).mean().item()  # what it corrects

    def lr_scale(self, name):
        return 1.0 if name.startswith("mae.") else 10.0  # the new damage embedding and head learn faster

    def batch(self, gidx, mine, gen):
        flip = torch.rand(len(gidx), generator=gen) < 0.5  # left-right mirror: the brain's own symmetry
        idx, flip = gidx[mine], flip[mine]
        return tuple(torch.where(flip[:, None, None, None], a[idx].flip(-1), a[idx]).to(self.device)
                     for a in self.train_data)

    def forward(self, net, batch):
        return net(batch[0], batch[1]).float()

    def loss(self, out, batch):
        loss = inpainting_loss(out, batch[2], batch[1]).mean()
        return loss, {"loss": loss.item()}

    def validate(self, model):
        scores = hole_scores(model, self.val_data, self.device, self.cfg.AMP)
        return {"loss": scores["hole_mse"], "loss_biharmonic": scores["biharmonic_hole_mse"]}


def damage_sources(train_set, cfg):
    """(images, copies) for damaged_set: each training slice INPAINT_COPIES times; with ANATOMY_VARIANTS, its
    copies taken in turn from the slice and its variants (the same count of damaged regions, on more brains
    than the one it trained on)."""
    if cfg.ANATOMY_VARIANTS == 0:
        return train_set.images.numpy(), cfg.INPAINT_COPIES
    bank, _ = anatomy_variants(train_set.images, cfg.ANATOMY_VARIANTS, cfg.SEED, cache=cfg.artifact("anatomy_variants"))
    n = len(train_set)
    order = [(copy % (cfg.ANATOMY_VARIANTS + 1)) * n + i for i in range(n) for copy in range(cfg.INPAINT_COPIES)]
    return bank[order].numpy(), 1


def hole_shapes(train_set, cfg):
    """-> (lesion shapes for damaged_set or None, what the holes are, in words). INPAINT_HOLES=lesions: the
    lesions of the training masks; a set without any falls back to synthetic regions, as said."""
    if cfg.INPAINT_HOLES == "synthetic":
        return None, "synthetic blocks, stripes and blobs"
    shapes = lesion_shapes(train_set.masks[:, 0].numpy())
    if not shapes:
        return None, "synthetic: INPAINT_HOLES=lesions but the training masks hold no lesion"
    return shapes, f"{len(shapes)} lesion shapes of the training masks, placed clear of lesions"


def finetune_inpainting(args, cfg, dist):
    device = dist.device(cfg.DEVICE)
    mae_path = cfg.artifact("mae")
    mae_state = load_checkpoint(mae_path, kind="mae")
    model_cfg = model_config_from(mae_state, mae_path)
    check_weights_fit(mae_state, "mae", model_cfg, mae_path)
    with stage("kernels chosen"):
        kernels = choose_kernels(device, cfg.AMP, model_cfg.embed_dim, cfg.MATMUL, dist.say)
    cfg = cfg.adopt(model_cfg, AMP=kernels.precision == "bf16")
    dist.say(describe(cfg, dist.world, "train") + "\n" + kernels.line())
    torch.manual_seed(cfg.SEED)
    with stage("data read"):
        train_set, val_set = load_split(cfg, quiet=not dist.main, trained_on=[(mae_path, mae_state)])
    t0 = time.time()
    shapes, holes = hole_shapes(train_set, cfg)
    lesions = train_set.masks[:, 0].numpy() if cfg.ANATOMY_VARIANTS == 0 else None  # a variant's lesions are not known
    with stage("damaged regions, biharmonic pre-fill"):
        train_data = tuple(map(torch.from_numpy, damaged_set(*damage_sources(train_set, cfg), cfg.SEED, shapes=shapes,
                                                             lesions=lesions)))
        val_data = tuple(map(torch.from_numpy, damaged_set(val_set.images.numpy(), 2, cfg.EVAL_SEED, shapes=shapes,
                                                           lesions=val_set.masks[:, 0].numpy())))
    dist.say(f"damaged regions ({holes}): {len(train_data[0])} training ({cfg.INPAINT_COPIES} per slice), "
             f"{len(val_data[0])} validation, biharmonic pre-fill in {time.time() - t0:.0f}s")
    model = InpaintingMIRAM(model_cfg)
    model.mae.load_state_dict(mae_state["model"])
    model = apply_kernels(model.to(device), kernels)
    task = InpaintingFinetune(cfg, train_data, val_data, device, split_record(cfg, train_set, mae_state))
    task.kernels = kernels.to_dict()
    with stage("epochs"):
        result = fit(task, model, cfg, dist, device, resume=not args.no_resume, stop_after=args.stop_after)
    written = [task.best, task.checkpoint, task.log]
    if dist.main:
        with stage("best model scored, transfer set"):
            written.append(save_inpaint_metrics(cfg, task, val_data, device, dist.say))
    dist.say(f"done: best validation hole MSE {result['best']:.5f} (biharmonic fill {task.prefill_loss:.5f})\n  "
             + "\n  ".join(written))
    return result


def save_inpaint_metrics(cfg, task, val_data, device, say):
    """The best inpainting model's hole scores on the validation regions and on the transfer set's (where one is
    configured) -> the path of inpaint_metrics.json."""
    best, best_state = build_from_checkpoint(task.best, "inpaint", map_location=device)
    metrics = {"validation": hole_scores(best.to(device), val_data, device, cfg.AMP),
               "run": {**run_info(), "kernels": task.kernels}}
    transfer, root = load_transfer(cfg, cfg.IMG_SIZE, trained_on=[(task.best, best_state)])
    if transfer is not None:
        damaged = tuple(map(torch.from_numpy, damaged_set(transfer.images.numpy(), 2, cfg.EVAL_SEED)))
        metrics["transfer"] = {**hole_scores(best, damaged, device, cfg.AMP), "data": f"all images in {root}"}
    save_json(cfg.artifact("inpaint_metrics"), metrics)
    for name, m in metrics.items():
        if name != "run":
            say(f"{name}: hole MSE {m['hole_mse']:.5f}, biharmonic fill {m['biharmonic_hole_mse']:.5f} "
                f"({m['gain_db']:+.2f} dB), {m['n_regions']} damaged regions")
    return cfg.artifact("inpaint_metrics")


@torch.no_grad()
def hole_scores(model, damaged, device, amp):
    """The inpainting model's and the biharmonic pre-fill's mean squared error inside the damaged regions of
    damaged = (pre-filled, fill weight, original) and the model's gain over the fill in dB."""
    model.eval()
    ours = []
    with autocast(device, amp):
        for s in range(0, len(damaged[0]), 32):
            x, w, t = (a[s:s + 32].to(device) for a in damaged)
            ours.append(hole_mse(model(x, w).float(), t, w))
    mse = torch.cat(ours).mean().item()
    fill = hole_mse(damaged[0], damaged[2], damaged[1]).mean().item()
    return {"hole_mse": mse, "biharmonic_hole_mse": fill, "gain_db": 10 * math.log10(fill / max(mse, 1e-12)),
            "n_regions": len(damaged[0])}


def phase_name(args):
    """pretrain, inpaint or superres: which of train.py's phases args run (its stage_times file's suffix)."""
    return "superres" if args.superres else "inpaint" if args.inpaint else "pretrain"


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (args.from_scratch or args.cnn) and not args.superres:
        parser.error("--from-scratch and --cnn go with --superres (classify.py has its own --from-scratch)")
    if args.checkpoint and (not args.superres or args.from_scratch or args.cnn):
        parser.error("--checkpoint goes with --superres alone (the MAE the fine-tune starts from)")
    cfg = load_config(args)
    with Distributed(cfg.DEVICE) as dist, output_lock(cfg.OUTPUT_PATH, dist.main, dist.say):
        if args.superres:
            import superres
            result = superres.finetune(args, cfg, dist)
        else:
            result = (finetune_inpainting if args.inpaint else pretrain)(args, cfg, dist)
        if dist.main:
            save_stages(cfg.artifact("stage_times", "_" + phase_name(args)))
        return result


if __name__ == "__main__":
    run_cli(main)

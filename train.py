"""Self-supervised pre-training of MIRAM: `python train.py [--preset demo] [--n-epochs N] ...`

Writes into OUTPUT_PATH: checkpoint.pth (latest, resumable), best_miram_mae.pth (best validation loss),
train_log.jsonl (one JSON line per epoch) and loss_curve.png. Restarting into the same OUTPUT_PATH resumes.

`python train.py --inpaint` then fine-tunes the pre-trained MAE to inpaint (see finetune_inpainting):
inpaint_checkpoint.pth, best_miram_inpaint.pth, inpaint_log.jsonl; enhance.py --mode inpaint uses it.

Data-parallel: `torchrun --nproc_per_node=N train.py ...` (NCCL on GPUs, Gloo on CPU). BATCH_SIZE is per
process; the learning rate scales with the global batch. Rank 0 alone writes logs, checkpoints and plots.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from config import MiramError, add_config_args, describe, load_config, run_cli
from dataset import (apply_augment, augment_params, batches, load_split, refuse_other_split, resolve_data_path,
                     split_record)
from models import (MIRAM, autocast, load_checkpoint, mask_noise, pick_device, remove_stale_temporaries,
                    resolve_amp, save_checkpoint, tune_for)

CHECKPOINT = "checkpoint.pth"
BEST = "best_miram_mae.pth"
LOG = "train_log.jsonl"
CURVE = "loss_curve.png"
INPAINT_CHECKPOINT = "inpaint_checkpoint.pth"
INPAINT_BEST = "best_miram_inpaint.pth"
INPAINT_LOG = "inpaint_log.jsonl"


def get_args_parser():
    parser = argparse.ArgumentParser("MIRAM self-supervised pre-training", add_help=True)
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if OUTPUT_PATH holds a checkpoint (it is then replaced)")
    parser.add_argument("--inpaint", action="store_true",
                        help="fine-tune the pre-trained MAE (best_miram_mae.pth) to inpaint damaged regions "
                             "instead of pre-training (INPAINT_EPOCHS, INPAINT_LR, INPAINT_COPIES)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="E",
                        help="stop after E epochs of this invocation (the schedule still spans N_EPOCHS); "
                             "run again to continue")
    return add_config_args(parser)


def param_groups(model, weight_decay):
    """No weight decay on biases, norms and tokens (MAE's convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, lr, weight_decay):
    # fused=True: one kernel for the whole update instead of a dozen per tensor; measured ~10% of a
    # bf16 training step on CPU (bench/train_throughput.py). Same update rule.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), fused=True)


def lr_at(step, total_steps, warmup_steps, base_lr, min_lr):
    """Linear warm-up, then cosine decay to min_lr, per optimizer step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def take_step(optimizer, loss, lr, stop_message):
    """One optimizer step at lr (each group scaled by its "lr_scale"); a non-finite loss stops with
    stop_message instead."""
    if not torch.isfinite(loss):
        raise MiramError(stop_message)
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def epoch_generator(seed, epoch):
    # Every random draw of an epoch (order, augmentation, masks) comes from (seed, epoch): a resumed run
    # replays exactly what an uninterrupted one would have done.
    return torch.Generator().manual_seed(seed * 100003 + epoch)


class Distributed:
    """torch.distributed as torchrun sets it up (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""

    def __init__(self, device_name="auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            gpu = torch.cuda.is_available() and device_name != "cpu"
            if gpu:
                torch.cuda.set_device(self.local_rank)
            torch.distributed.init_process_group("nccl" if gpu else "gloo")
        self.main = self.rank == 0

    def say(self, *args, **kwargs):
        """print, on rank 0 only."""
        if self.main:
            print(*args, **kwargs)

    def device(self, name):
        if self.enabled and torch.cuda.is_available() and name != "cpu":
            return torch.device("cuda", self.local_rank)
        return pick_device(name)

    def wrap(self, model, device):
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, batch_size):
        """This process's part of a global batch: rank r takes items [r*B, (r+1)*B)."""
        return slice(self.rank * batch_size, (self.rank + 1) * batch_size)

    def sum(self, values):
        """Sums a list of floats over the processes."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.enabled:
            if torch.distributed.get_backend() == "nccl":
                t = t.cuda()
            torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def same_weights(self, model):
        """True when every process holds bitwise the same parameters (checked through a checksum)."""
        if not self.enabled:
            return True
        digest = torch.tensor([float(p.detach().double().sum()) for p in model.parameters()], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            digest = digest.cuda()
        gathered = [torch.zeros_like(digest) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, digest)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def close(self):
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def steps_in_epoch(n_train, batch_size, world, accum_steps=1):
    # Distributed runs drop an incomplete last global batch, so every process steps the same number of times.
    micro = n_train // (batch_size * world) if world > 1 else math.ceil(n_train / batch_size)
    return math.ceil(micro / accum_steps)


def local_batch(images, gidx, gen, dist, batch_size, device, augment=True):
    """This process's images of global batch `gidx`, on `device`, and the slice of the batch it took.

    Augmentation is drawn for the whole global batch (the same on every process), then applied where the
    model runs: on a GPU the CPU would otherwise bound the step rate."""
    params = augment_params(len(gidx), gen) if augment else None
    mine = dist.shard(batch_size)
    imgs = images[gidx[mine]].to(device, non_blocking=True)
    if params is not None:
        imgs = apply_augment(imgs, {k: v[mine].to(device) for k, v in params.items()})
    return imgs, mine


def train_one_epoch(model, data, optimizer, cfg, device, epoch, steps_per_epoch, total_steps, base_lr,
                    dist=None):
    """One pass over the training set. Order, augmentation and masks are drawn for each global batch from
    (SEED, epoch), then split across processes: N processes with batch B replay a single process with
    batch N*B."""
    from contextlib import nullcontext

    from tqdm import tqdm
    dist = dist or Distributed()
    model.train()
    gen = epoch_generator(cfg.SEED, epoch)
    torch.manual_seed(cfg.SEED * 100003 + epoch)  # anything drawing from the global RNG replays on resume
    num_patches = (cfg.IMG_SIZE // cfg.PATCH_SIZE) ** 2
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, loss_fine, loss_coarse (each times images), images
    warmup_steps = cfg.WARMUP_EPOCHS * steps_per_epoch
    step = epoch * steps_per_epoch
    global_batches = list(batches(len(data), cfg.BATCH_SIZE * dist.world, gen, drop_last=dist.enabled))
    bar = tqdm(global_batches, desc=f"epoch {epoch + 1}/{cfg.N_EPOCHS}", unit="batch", leave=False,
               file=sys.stdout, disable=not (dist.main and sys.stdout.isatty()))
    optimizer.zero_grad(set_to_none=True)
    for i, gidx in enumerate(bar):
        imgs, mine = local_batch(data.images, gidx, gen, dist, cfg.BATCH_SIZE, device, cfg.AUGMENT)
        noise = torch.rand(len(gidx), num_patches, generator=gen)[mine].to(device, non_blocking=True)
        last_micro = (i + 1) % cfg.ACCUM_STEPS == 0 or i + 1 == len(global_batches)
        # gradients are all-reduced once per optimizer step, not per accumulated micro-batch
        sync = nullcontext() if last_micro or not dist.enabled else model.no_sync()
        with sync:
            with autocast(device, cfg.AMP):
                out = model(imgs, noise)
            loss = out.loss.float()
            if not torch.isfinite(loss):
                raise MiramError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, batch {i + 1}: lower "
                                 f"LEARNING_RATE or turn AMP off; the last good checkpoint is kept")
            (loss / cfg.ACCUM_STEPS).backward()
        if last_micro:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, base_lr, cfg.MIN_LR)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        n = imgs.shape[0]
        for j, k in enumerate(("loss", "loss_fine", "loss_coarse")):
            sums[j] += getattr(out, k).item() * n
        sums[3] += n
        bar.set_postfix(loss=f"{sums[0] / sums[3]:.4f}")
    total = dist.sum(sums)
    return {"loss": total[0] / total[3], "loss_fine": total[1] / total[3], "loss_coarse": total[2] / total[3],
            "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def validate(model, data, cfg, device):
    """Loss on the validation split with fixed masks (EVAL_SEED), so epochs compare like with like."""
    model.eval()
    noise = mask_noise(len(data), model.encoder.num_patches, cfg.EVAL_SEED)
    sums = {"loss": 0.0, "loss_fine": 0.0, "loss_coarse": 0.0}
    for idx in batches(len(data), cfg.BATCH_SIZE):
        imgs = data.images[idx].to(device)
        with autocast(device, cfg.AMP):
            out = model(imgs, noise[idx].to(device))
        for k in sums:
            sums[k] += getattr(out, k).float().item() * len(idx)
    return {k: v / len(data) for k, v in sums.items()}


def plot_losses(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation (fixed masks)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (fine + %s coarse)" % history[-1].get("lambda_coarse", ""))
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("MIRAM pre-training")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def read_history(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_history(history, path):
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            for h in history:
                f.write(json.dumps(h) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise MiramError(f"{path}: could not write the training log ({e.strerror}); checkpoints are kept") from None


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    with Distributed(cfg.DEVICE) as dist:
        if args.inpaint:
            return finetune_inpainting(args, cfg, dist)
        return run(args, cfg, dist)


def check_same_weights(dist, model):
    """After data-parallel training: says so, and stops if the processes' weights differ."""
    if dist.enabled:
        same = dist.same_weights(model)
        dist.say(f"{dist.world} processes hold {'identical' if same else 'DIFFERENT'} weights")
        if not same:
            raise MiramError("data-parallel processes diverged: their weights differ")


def hole_mse(pred, target, weight):
    """Mean squared error inside each sample's hole (weight > 0), per sample: averaged over samples, a thin
    stripe counts as much as a large block."""
    hole = (weight > 0).to(pred.dtype)
    return ((pred - target) ** 2 * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3)).clamp(min=1)


# The fine-tune's loss adds this much of (1 - SSIM inside the hole) to the hole's MSE: MSE alone learned
# corrections that raised PSNR but lowered SSIM against the biharmonic fill (measured).
INPAINT_SSIM_WEIGHT = 0.05


def inpainting_loss(pred, target, weight):
    from losses import ssim
    hole = (weight > 0).to(pred.dtype)
    return hole_mse(pred, target, weight) + INPAINT_SSIM_WEIGHT * (1 - ssim(pred, target, weight=hole, dtype=pred.dtype))


def finetune_inpainting(args, cfg, dist=None):
    """Fine-tunes InpaintingMIRAM from best_miram_mae.pth on synthetic damage (dataset.random_damage:
    blocks, stripes, blobs) of the training slices, INPAINT_COPIES fixed draws per slice; validation on
    2 draws per validation slice, against the biharmonic fill the model corrects. Resumable; keeps the
    epoch with the lowest validation loss. Under torchrun, as pre-training: each global batch is drawn
    once and split across the processes, which replay one process with their summed batch."""
    from dataset import damaged_set
    from models import InpaintingMIRAM, model_config_from
    dist = dist or Distributed()
    say = dist.say
    say(describe(cfg, dist.world))
    torch.manual_seed(cfg.SEED)
    device = dist.device(cfg.DEVICE)
    cfg.AMP = resolve_amp(device, cfg.AMP, say)
    out_dir = cfg.OUTPUT_PATH
    mae_path = os.path.join(out_dir, BEST)
    ckpt_path, best_path = os.path.join(out_dir, INPAINT_CHECKPOINT), os.path.join(out_dir, INPAINT_BEST)
    log_path = os.path.join(out_dir, INPAINT_LOG)
    mae_state = load_checkpoint(mae_path, kind="mae")
    model_cfg = model_config_from(mae_state)
    if dist.main and remove_stale_temporaries(out_dir):
        say(f"removed unfinished temporary files a killed run left in {out_dir}")
    cfg.IMG_SIZE = model_cfg.img_size
    train_set, val_set = load_split(cfg, trained_on=[(mae_path, mae_state)])
    learned_from = split_record(cfg, train_set, mae_state)
    t0 = time.time()
    train_data = damaged_set(train_set.images, cfg.INPAINT_COPIES, cfg.SEED)
    val_data = damaged_set(val_set.images, 2, cfg.EVAL_SEED)
    say(f"damaged regions: {len(train_data[0])} training ({cfg.INPAINT_COPIES} per slice), {len(val_data[0])} "
        f"validation, biharmonic pre-fill in {time.time() - t0:.0f}s")

    model = InpaintingMIRAM(model_cfg)
    model.mae.load_state_dict(mae_state["model"])
    model = tune_for(model.to(device), device, cfg.AMP)
    pretrained = [p for n, p in model.named_parameters() if n.startswith("mae.")]
    added = [p for n, p in model.named_parameters() if not n.startswith("mae.")]  # damage embedding, head
    groups = [{"params": pretrained, "lr_scale": 1.0}, {"params": added, "lr_scale": 10.0}]
    base_lr = cfg.INPAINT_LR * cfg.BATCH_SIZE * dist.world / 16  # scaled by the global batch, as pre-training
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.999), weight_decay=0.05)
    start, best_val, history = 0, float("inf"), []
    if os.path.isfile(ckpt_path) and not args.no_resume:
        state = load_checkpoint(ckpt_path, kind="inpaint", expected=model_cfg, map_location=device)
        refuse_other_split(state, learned_from, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best_val = state["epoch"], state["metrics"]["best_val_loss"]
        history = [h for h in read_history(log_path) if h["epoch"] <= start]
        say(f"resuming the inpainting fine-tune from {ckpt_path} after epoch {start}")

    prefill_loss = hole_mse(val_data[0], val_data[2], val_data[1]).mean().item()  # what the model corrects

    def validate_fill():
        model.eval()
        losses = []
        with torch.no_grad(), autocast(device, cfg.AMP):
            for s in range(0, len(val_data[0]), 32):
                x, w, t = (a[s:s + 32].to(device) for a in val_data)
                losses.append(hole_mse(model(x, w).float(), t, w))
        return torch.cat(losses).mean().item()

    net = dist.wrap(model, device)  # DDP averages gradients; `model` stays the plain module to save
    steps_per_epoch = steps_in_epoch(len(train_data[0]), cfg.BATCH_SIZE, dist.world)
    if steps_per_epoch == 0:
        raise MiramError(f"{len(train_data[0])} damaged training slices are fewer than one global batch "
                         f"({cfg.BATCH_SIZE} x {dist.world} processes): lower BATCH_SIZE")
    total = cfg.INPAINT_EPOCHS * steps_per_epoch
    end = cfg.INPAINT_EPOCHS if args.stop_after is None else min(cfg.INPAINT_EPOCHS, start + args.stop_after)
    if start >= cfg.INPAINT_EPOCHS:
        say(f"already fine-tuned for {start} epochs (INPAINT_EPOCHS={cfg.INPAINT_EPOCHS}); nothing to do")
    for epoch in range(start, end):
        t0 = time.time()
        model.train()
        gen = epoch_generator(cfg.SEED + 2, epoch)
        step, sums = epoch * steps_per_epoch, [0.0, 0]
        mine = dist.shard(cfg.BATCH_SIZE)
        for gidx in batches(len(train_data[0]), cfg.BATCH_SIZE * dist.world, gen, drop_last=dist.enabled):
            flip = torch.rand(len(gidx), generator=gen) < 0.5  # left-right mirror: the brain's own symmetry
            idx, flip = gidx[mine], flip[mine]
            x, w, t = (a[idx] for a in train_data)
            x, w, t = (torch.where(flip[:, None, None, None], a.flip(-1), a).to(device) for a in (x, w, t))
            with autocast(device, cfg.AMP):
                pred = net(x, w).float()
            loss = inpainting_loss(pred, t, w).mean()
            take_step(optimizer, loss, lr_at(step, total, steps_per_epoch, base_lr, 0.0),
                      f"non-finite loss at inpainting epoch {epoch + 1}: lower INPAINT_LR")
            step += 1
            sums[0] += loss.item() * len(idx)
            sums[1] += len(idx)
        sums = dist.sum(sums)
        val_loss = validate_fill()  # every process: same data, same result
        is_best = val_loss < best_val
        best_val = min(best_val, val_loss)
        history.append({"epoch": epoch + 1, "train_loss": sums[0] / sums[1], "val_loss": val_loss,
                        "val_loss_biharmonic": prefill_loss, "seconds": round(time.time() - t0, 2)})
        metrics = {"best_val_loss": best_val, "val_loss": val_loss, "val_loss_biharmonic": prefill_loss}
        if dist.main:
            if is_best:
                save_checkpoint(best_path, model, "inpaint", epoch=epoch + 1, metrics=metrics,
                                extra=learned_from)
            write_history(history, log_path)
            save_checkpoint(ckpt_path, model, "inpaint", optimizer=optimizer, epoch=epoch + 1, metrics=metrics,
                            extra={"world_size": dist.world, **learned_from})
        say(f"[inpaint] epoch {epoch + 1:>3}/{cfg.INPAINT_EPOCHS}  train {history[-1]['train_loss']:.5f}  "
            f"val {val_loss:.5f} (biharmonic fill {prefill_loss:.5f})  {history[-1]['seconds']:.1f}s"
            f"{'  *best' if is_best else ''}", flush=True)
    check_same_weights(dist, model)
    say(f"done: best validation hole MSE {best_val:.5f}\n  {best_path}\n  {ckpt_path}\n  {log_path}")
    return {"best_val_loss": best_val, "history": history}


def run(args, cfg, dist):
    say = dist.say
    say(describe(cfg, dist.world))
    torch.manual_seed(cfg.SEED)
    device = dist.device(cfg.DEVICE)
    cfg.AMP = resolve_amp(device, cfg.AMP, say)
    out_dir = cfg.OUTPUT_PATH
    if dist.main:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise MiramError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
        if not os.access(out_dir, os.W_OK):
            raise MiramError(f"{out_dir}: output directory is not writable")
        if remove_stale_temporaries(out_dir):
            say(f"removed unfinished temporary files a killed run left in {out_dir}")
        resolve_data_path(cfg)  # builds the demo set once, before the other processes read it
    dist.barrier()
    ckpt_path, best_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, BEST)
    log_path, curve_path = os.path.join(out_dir, LOG), os.path.join(out_dir, CURVE)

    train_set, val_set = load_split(cfg, quiet=not dist.main)
    if device.type == "cuda":  # page-locked: batches copy to the GPU asynchronously
        train_set.images = train_set.images.pin_memory()
    say(f"data: {len(train_set)} training / {len(val_set)} validation slices, "
        f"{len(set(train_set.subjects))} / {len(set(val_set.subjects))} subjects; device {device}, "
        f"{dist.world} process(es)")
    learned_from = split_record(cfg, train_set)  # every checkpoint names the subjects it learned from

    model_cfg = cfg.model_config()
    model = tune_for(MIRAM(model_cfg).to(device), device, cfg.AMP)
    base_lr = cfg.effective_lr(dist.world)
    optimizer = make_optimizer(model, base_lr, cfg.WEIGHT_DECAY)
    start_epoch, best_val, history = 0, float("inf"), []
    if os.path.isfile(ckpt_path) and not args.no_resume:
        state = load_checkpoint(ckpt_path, kind="mae", expected=model_cfg, map_location=device)
        refuse_other_split(state, learned_from, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"]
        best_val = state["metrics"].get("best_val_loss", float("inf"))
        history = [h for h in read_history(log_path) if h["epoch"] <= start_epoch]
        say(f"resuming from {ckpt_path} after epoch {start_epoch}")
    elif args.no_resume and dist.main and os.path.isfile(log_path):
        os.remove(log_path)
    net = dist.wrap(model, device)  # DDP averages gradients; `model` stays the plain module to save
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params / 1e6:.2f} M parameters; {model.encoder.num_patches} patches, "
        f"{int(model.encoder.num_patches * (1 - model_cfg.mask_ratio))} visible")

    steps_per_epoch = steps_in_epoch(len(train_set), cfg.BATCH_SIZE, dist.world, cfg.ACCUM_STEPS)
    if steps_per_epoch == 0:
        raise MiramError(f"{len(train_set)} training slices are fewer than one global batch "
                         f"({cfg.BATCH_SIZE} x {dist.world} processes): lower BATCH_SIZE")
    total_steps = cfg.N_EPOCHS * steps_per_epoch
    if start_epoch >= cfg.N_EPOCHS:
        say(f"already trained for {start_epoch} epochs (N_EPOCHS={cfg.N_EPOCHS}); nothing to do")
    end_epoch = cfg.N_EPOCHS if args.stop_after is None else min(cfg.N_EPOCHS, start_epoch + args.stop_after)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        try:
            train_stats = train_one_epoch(net, train_set, optimizer, cfg, device, epoch, steps_per_epoch,
                                          total_steps, base_lr, dist)
        except torch.cuda.OutOfMemoryError:
            raise MiramError("CUDA out of memory: reduce BATCH_SIZE (e.g. --batch-size 8) and raise "
                             "ACCUM_STEPS to keep the effective batch") from None
        val_stats = validate(model, val_set, cfg, device)  # every process: same data, same result
        seconds = time.time() - t0
        is_best = val_stats["loss"] < best_val
        best_val = min(best_val, val_stats["loss"])
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_stats.items()},
                  **{f"val_{k}": v for k, v in val_stats.items()}, "seconds": round(seconds, 2),
                  "images_per_s": round(len(train_set) / seconds, 2), "lambda_coarse": cfg.LAMBDA_COARSE,
                  "max_rss_mb": round(peak_rss_mb(), 1)}
        history.append(record)
        if dist.main:
            metrics = {"best_val_loss": best_val, **{f"val_{k}": v for k, v in val_stats.items()}}
            extra = {"train_config": {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))},
                     "world_size": dist.world, **learned_from}
            if is_best:
                save_checkpoint(best_path, model, "mae", epoch=epoch + 1, metrics=metrics, extra=extra)
            # The resumable checkpoint is written last: it never points past a best/log that was not saved.
            write_history(history, log_path)
            if (epoch + 1) % cfg.CHECKPOINT_EVERY == 0 or epoch + 1 == end_epoch:
                save_checkpoint(ckpt_path, model, "mae", optimizer=optimizer, epoch=epoch + 1, metrics=metrics,
                                extra=extra)
        say(f"epoch {epoch + 1:>4}/{cfg.N_EPOCHS}  train {train_stats['loss']:.4f}  "
            f"val {val_stats['loss']:.4f} (fine {val_stats['loss_fine']:.4f}, coarse "
            f"{val_stats['loss_coarse']:.4f})  lr {train_stats['lr']:.2e}  {seconds:.1f}s"
            f"{'  *best' if is_best else ''}", flush=True)
    check_same_weights(dist, model)
    if history and dist.main:
        plot_losses(history, curve_path)
    say(f"done: best validation loss {best_val:.4f}\n  {best_path}\n  {ckpt_path}\n  {log_path}\n  {curve_path}")
    return {"best_val_loss": best_val, "history": history}


if __name__ == "__main__":
    run_cli(main)

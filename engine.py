"""The one training loop. Pre-training, the inpainting fine-tune and the classifier fine-tune are each a
Task (their data, forward, loss and validation) handed to fit(), which owns everything else: the epoch
loop, the optimizer step (AdamW with weight-decay groups, gradient accumulation, warm-up + cosine
schedule, a stop on a non-finite loss, AMP), resume, torchrun, the per-epoch line and the JSON log.

Reproducible: every random draw of an epoch comes from (SEED, epoch), so a resumed run replays exactly what
an uninterrupted one would have done, and N processes with batch B replay one process with batch N*B.
"""
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import load_checkpoint, save_checkpoint
from config import MiramError
from splits import refuse_other_split
from hardware import amp_dtype, autocast, keep_freed_memory, pick_device
from records import remove_stale_temporaries, run_info, temp_beside


# ---- seeds, schedule, optimizer ----------------------------------------------------------------------

def epoch_seed(seed, epoch):
    return seed * 100003 + epoch


def epoch_generator(seed, epoch):
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def batches(n: int, batch_size: int, generator: torch.Generator = None, drop_last: bool = False):
    """Index batches over n items, shuffled when a generator is given."""
    import torch
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def lr_at(step, total_steps, warmup_steps, base_lr, min_lr):
    """Linear warm-up, then cosine decay to min_lr, per optimizer step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model, weight_decay, lr_scale=None):
    """AdamW groups: no weight decay on biases, norms and tokens (MAE's convention); lr_scale(name) gives
    a parameter's share of the learning rate (None: frozen, left out)."""
    groups = {}
    for name, p in model.named_parameters():
        scale = 1.0 if lr_scale is None else lr_scale(name)
        if scale is None:
            p.requires_grad_(False)
        if not p.requires_grad:
            continue
        no_wd = p.ndim <= 1 or name.endswith("token")
        g = groups.setdefault((scale, no_wd), {"params": [], "lr_scale": scale,
                                               "weight_decay": 0.0 if no_wd else weight_decay})
        g["params"].append(p)
    return list(groups.values())


def layer_decay(depth, decay):
    """lr_scale for a ViT encoder under a head: block i of D gets decay**(D - i), the embeddings
    decay**(D + 1), the final norm decay, the head 1 (BEiT's layer-wise decay)."""
    def scale(name):
        if not name.startswith("encoder."):
            return 1.0
        if name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith("encoder.norm"):
            layer = depth
        else:  # patch_embed, cls_token
            layer = 0
        return decay ** (depth + 1 - layer)
    return scale


def make_optimizer(groups, lr, betas):
    # fused=True: one kernel for the whole update instead of a dozen per tensor; the same update rule.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def steps_in_epoch(n_train, batch_size, world, accum_steps=1):
    # Distributed runs drop an incomplete last global batch, so every process steps the same number of times.
    micro = n_train // (batch_size * world) if world > 1 else math.ceil(n_train / batch_size)
    return math.ceil(micro / accum_steps)


# ---- torchrun ----------------------------------------------------------------------------------------

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


# ---- the task a phase hands to fit() -----------------------------------------------------------------

class Task:
    """What one phase trains. A phase sets the attributes and defines batch, forward, loss and validate."""
    name = "train"            # in messages and the per-epoch line
    kind = "mae"              # the checkpoint kind (checkpoint.MODEL_KINDS)
    epochs = 1
    lr = 1e-4                 # for a global batch of 16; scaled linearly with the real one
    lr_setting = "LEARNING_RATE"  # the setting a non-finite loss advises to lower
    warmup_epochs = 0
    min_lr = 0.0
    weight_decay = 0.05
    betas = (0.9, 0.999)
    seed_offset = 0           # phases draw from different streams of (SEED, epoch)
    n_train = 0               # items in an epoch
    monitor = "loss"          # the validation figure that picks the best checkpoint
    maximize = False
    shown = ()                # validation figures printed beside the monitored one
    checkpoint = best = log = ""  # paths: resumable checkpoint, best model, JSON lines per epoch
    extra = {}                # fields every checkpoint carries (the split record, the variant)
    must_match = ()           # extra fields a resumed checkpoint must share
    kernels = {}              # hardware.Kernels the phase chose, recorded in the log's run line

    def lr_scale(self, name):
        return 1.0

    def train_mode(self, model):
        model.train()

    def batch(self, gidx, mine, gen):
        """This process's share (mine) of global batch gidx, drawn with gen, on the device."""
        raise NotImplementedError

    def forward(self, net, batch):
        """Runs under autocast."""
        raise NotImplementedError

    def loss(self, out, batch):
        """-> fp32 scalar loss, {figure: value} averaged over the batch (logged per epoch)."""
        raise NotImplementedError

    def validate(self, model):
        """-> {figure: value}, the monitored one included."""
        raise NotImplementedError


def read_history(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_history(history, path):
    tmp = None
    try:
        fd, tmp = temp_beside(path, ".jsonl")
        with os.fdopen(fd, "w") as f:
            for h in history:
                f.write(json.dumps(h) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise MiramError(f"{path}: could not write the training log ({e.strerror}); checkpoints are kept") from None


def scalars(d):
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def improved(value, best, maximize):
    # A nan figure (AUROC with one class in validation) still saves when maximizing, so a best model exists.
    return not (value <= best) if maximize else value < best


# ---- the loop ----------------------------------------------------------------------------------------

def train_one_epoch(task, model, net, optimizer, scaler, cfg, dist, device, epoch, schedule):
    task.train_mode(model)
    gen = epoch_generator(cfg.SEED + task.seed_offset, epoch)
    torch.manual_seed(epoch_seed(cfg.SEED, epoch))  # dropout and anything else on the global RNG replays
    global_batches = list(batches(task.n_train, cfg.BATCH_SIZE * dist.world, gen, drop_last=dist.enabled))
    mine = dist.shard(cfg.BATCH_SIZE)
    bar = tqdm(global_batches, desc=f"{task.name} {epoch + 1}/{task.epochs}", unit="batch", leave=False,
               file=sys.stdout, disable=not (dist.main and sys.stdout.isatty()))
    step = epoch * schedule["steps_per_epoch"]
    sums, seen = {}, 0
    optimizer.zero_grad(set_to_none=True)
    for i, gidx in enumerate(bar):
        batch = task.batch(gidx, mine, gen)
        last_micro = (i + 1) % cfg.ACCUM_STEPS == 0 or i + 1 == len(global_batches)
        # gradients are all-reduced once per optimizer step, not per accumulated micro-batch
        sync = nullcontext() if last_micro or not dist.enabled else net.no_sync()
        with sync:
            with autocast(device, cfg.AMP):
                out = task.forward(net, batch)
            loss, stats = task.loss(out, batch)
            if not torch.isfinite(loss):
                raise MiramError(f"non-finite loss ({loss.item()}) at {task.name} epoch {epoch + 1}, batch {i + 1}: "
                                 f"lower {task.lr_setting} or turn AMP off; the last good checkpoint is kept")
            scaler.scale(loss / cfg.ACCUM_STEPS).backward()
        if last_micro:
            lr = lr_at(step, schedule["total"], schedule["warmup"], schedule["base_lr"], task.min_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        n = len(gidx[mine])
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        seen += n
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
    keys = sorted(sums)
    totals = dist.sum([sums[k] for k in keys] + [seen])
    return {k: t / totals[-1] for k, t in zip(keys, totals)}, step


def fit(task, model, cfg, dist, device, resume=True, stop_after=None):
    """Trains task's model for task.epochs (resuming task.checkpoint when there is one), keeps the epoch
    with the best validation figure in task.best, logs every epoch to task.log. Rank 0 alone writes.
    -> {"best", "history" (each epoch's "step" counts optimizer steps), "epochs_run" (this invocation),
    "epochs" (done in all)}."""
    say = dist.say
    out_dir = os.path.dirname(os.path.abspath(task.checkpoint))
    if dist.main:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise MiramError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
        if not os.access(out_dir, os.W_OK):
            raise MiramError(f"{out_dir}: output directory is not writable")
        if remove_stale_temporaries(out_dir):
            say(f"removed unfinished temporary files a killed run left in {out_dir}")
    steps_per_epoch = steps_in_epoch(task.n_train, cfg.BATCH_SIZE, dist.world, cfg.ACCUM_STEPS)
    if steps_per_epoch == 0:
        raise MiramError(f"{task.name}: {task.n_train} training items are fewer than one global batch "
                         f"({cfg.BATCH_SIZE} x {dist.world} processes): lower BATCH_SIZE")
    base_lr = cfg.scaled_lr(task.lr, dist.world, task.n_train)
    schedule = {"steps_per_epoch": steps_per_epoch, "total": task.epochs * steps_per_epoch,
                "warmup": task.warmup_epochs * steps_per_epoch, "base_lr": base_lr}
    optimizer = make_optimizer(param_groups(model, task.weight_decay, task.lr_scale), base_lr, task.betas)
    # fp16 autocast (GPUs without bf16) needs its gradients scaled against underflow; elsewhere a no-op
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.AMP and device.type == "cuda"
                                  and amp_dtype(device) == torch.float16)
    start, best, history = 0, (-math.inf if task.maximize else math.inf), []
    if resume and os.path.isfile(task.checkpoint):
        state = load_checkpoint(task.checkpoint, kind=task.kind, expected=model.cfg, map_location=device)
        for key in task.must_match:
            if state.get(key) != task.extra.get(key):
                raise MiramError(f"{task.checkpoint}: belongs to {key} {state.get(key)!r}, not {task.extra.get(key)!r}")
        refuse_other_split(state, task.extra, task.checkpoint)
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as e:
            raise MiramError(f"{task.checkpoint}: its optimizer state does not fit this run ({e}); "
                             "use --no-resume to start over") from None
        start, best = state["epoch"], state["metrics"]["best"]
        history = [h for h in read_history(task.log) if h["epoch"] <= start]
        say(f"resuming {task.name} from {task.checkpoint} after epoch {start}")
    elif not resume and dist.main and os.path.isfile(task.log):
        os.remove(task.log)  # a new history; the models are replaced as it makes better ones
    net = dist.wrap(model, device)  # DDP averages gradients; `model` stays the plain module to save
    if device.type == "cpu":
        keep_freed_memory()  # each step reuses the last one's memory (hardware.keep_freed_memory)
    end = task.epochs if stop_after is None else min(task.epochs, start + stop_after)
    if start >= task.epochs:
        say(f"{task.name}: already trained for {start} epochs (of {task.epochs}); nothing to do")
    for epoch in range(start, end):
        t0 = time.time()
        try:
            train_stats, step = train_one_epoch(task, model, net, optimizer, scaler, cfg, dist, device, epoch, schedule)
        except torch.cuda.OutOfMemoryError:
            raise MiramError("CUDA out of memory: reduce BATCH_SIZE (e.g. --batch-size 8) and raise "
                             "ACCUM_STEPS to keep the effective batch") from None
        model.eval()
        with torch.no_grad():
            val = task.validate(model)  # every process: same data, same result
        seconds = time.time() - t0
        is_best = improved(val[task.monitor], best, task.maximize)
        best = val[task.monitor] if is_best else best
        history.append({"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_stats.items()},
                        **{f"val_{k}": v for k, v in scalars(val).items()},
                        "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0),
                        "step": step, "seconds": round(seconds, 2),
                        "images_per_s": round(task.n_train / seconds, 2),
                        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        if epoch == start:  # the first line each invocation logs says which command, on which CPU, how
            history[-1]["run"] = {**run_info(), "kernels": task.kernels}
        if dist.main:
            metrics = {"best": best, "monitor": task.monitor, **scalars(val)}
            extra = {"train_config": {k: v for k, v in vars(cfg).items() if isinstance(v, (int, float, str, bool))},
                     "world_size": dist.world, **task.extra}
            if is_best:
                save_checkpoint(task.best, model, task.kind, epoch=epoch + 1, metrics=metrics, extra=extra)
            # The resumable checkpoint is written last: it never points past a best model or log not saved.
            write_history(history, task.log)
            if (epoch + 1) % cfg.CHECKPOINT_EVERY == 0 or epoch + 1 == end:
                save_checkpoint(task.checkpoint, model, task.kind, optimizer=optimizer, epoch=epoch + 1,
                                metrics=metrics, extra=extra)
        shown = "".join(f", {k} {val[k]:.4f}" for k in task.shown if k in val)
        say(f"[{task.name}] epoch {epoch + 1:>3}/{task.epochs}  train loss {train_stats['loss']:.4f}  "
            f"val {task.monitor} {val[task.monitor]:.4f}{shown}  lr {history[-1]['lr']:.2e}  {seconds:.1f}s"
            f"{'  *best' if is_best else ''}", flush=True)
    if dist.enabled:
        same = dist.same_weights(model)
        say(f"{dist.world} processes hold {'identical' if same else 'DIFFERENT'} weights")
        if not same:
            raise MiramError("data-parallel processes diverged: their weights differ")
    return {"best": best, "history": history, "epochs_run": max(0, end - start), "epochs": max(start, end)}

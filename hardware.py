"""Where and how training runs: the device, mixed precision where the hardware has it, and the fastest
measured kernels for the step. The maths and the weights are the same whatever is chosen here."""
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from config import MiramError
from records import cpu_name, save_json


# ---- device and precision ----------------------------------------------------------------------------



# ---- device and precision ----------------------------------------------------------------------------

def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MiramError(f"DEVICE={name} asked for, but no CUDA device is available")
    return torch.device(name)


def native_amp(device: torch.device) -> bool:
    """Whether autocast runs on native low-precision hardware here: a CUDA GPU, or a CPU with AVX-512 BF16
    or AMX. Other CPUs emulate bf16 matmuls, many times slower than fp32 (bench/amp_step.py measures it)."""
    if device.type != "cpu":
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_amp(device: torch.device, requested: bool, say=print, width: int = 192) -> bool:
    """AMP as configured, except on a CPU where bf16 would be emulated (see native_amp) or is measured no
    faster than fp32 at this model width (bf16_is_faster): fp32 then, said once."""
    if not requested or device.type != "cpu":
        return requested
    if not native_amp(device):
        say("note: AMP is on, but this CPU has no native bf16 (AVX-512 BF16 or AMX): running in fp32, as "
            "emulated bf16 is many times slower")
        return False
    faster, speedup = bf16_is_faster(width)
    if not faster:
        say(f"note: AMP is on, but on this CPU a bf16 transformer block measured {speedup:.2f}x the speed of fp32 "
            f"(needs {MEASURED_MARGIN}x): running in fp32")
    return faster


def amp_dtype(device: torch.device):
    """bf16 where the hardware has it (CPUs with AVX-512 bf16 / AMX, Ampere+ GPUs), else fp16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=amp_dtype(device), enabled=enabled)


# ---- memory ------------------------------------------------------------------------------------------

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_kept = None  # keep_freed_memory's answer, once asked


def keep_freed_memory() -> bool:
    """Has glibc's malloc keep the memory a training step frees for the next step, instead of handing it
    back to the system and faulting fresh zeroed pages in again: blocks up to 32 MB (the largest glibc
    allows) come from the heap, which is never trimmed (bench/allocator.py measures what it is worth).
    -> whether it applied (glibc only)."""
    global _kept
    if _kept is None:
        try:
            import ctypes
            mallopt = ctypes.CDLL(None).mallopt
            _kept = all(mallopt(param, value) == 1 for param, value in (
                (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 2 ** 31 - 1), (_M_TOP_PAD, 256 << 20)))
        except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): its allocator as it is
            _kept = False
    return _kept


# ---- kernels -----------------------------------------------------------------------------------------

def _onednn_linear_available() -> bool:
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w = torch.ones(2, 4), torch.ones(3, 4)
        return torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w))
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


def onednn_linear(x, w, b):
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _OneDNNLinearFn(torch.autograd.Function):
    """y = x W^T + b with every product on oneDNN's fp32 GEMM, which on some CPUs runs much faster than torch's
    default fp32 matmul and on others slower (choose_kernels times it). The backward is written out because the
    op has no autograd formula of its own."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g2 = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad_out, weight.t(), None)  # (..., in); oneDNN reads the transpose in place
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])  # (N, in)
            grad_w = onednn_linear(g2.t(), x2.t(), None)  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


class FastLinear(nn.Linear):
    """nn.Linear that uses oneDNN's fp32 GEMM on CPU when it can; same parameters, same state dict.

    Falls back to F.linear on GPU, under autocast (bf16 GEMMs are already on oneDNN), in other dtypes, while
    exporting to ONNX, and where the private op is missing.
    """

    def forward(self, x):
        if (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
                and not torch.compiler.is_compiling()):
            return _OneDNNLinearFn.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_fast_linear(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switches every nn.Linear of a model to FastLinear (or back); weights are untouched."""
    for m in model.modules():
        if enabled and type(m) is nn.Linear:
            m.__class__ = FastLinear
        elif not enabled and type(m) is FastLinear:
            m.__class__ = nn.Linear
    return model


def use_fused_attention(model: nn.Module, enabled: bool) -> nn.Module:
    """timm's fused SDPA kernel, or its plain q@k -> softmax -> @v path.

    Under bf16 autocast on CPU the plain path trains faster (SDPA's CPU flash backward is slow in bf16 at these
    sequence lengths); in fp32 and on GPU the fused kernel wins (bench/train_throughput.py).
    """
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = enabled
    return model


def matmul_gflops(threads, size=2048, reps=5, dtype=torch.float32):
    """The matrix-multiply rate of this machine at `threads` threads, the yardstick every row's share is
    measured against: in fp32 the faster of torch's default matmul and oneDNN's (which is faster differs by
    CPU), best of reps; dtype=torch.bfloat16: torch's bf16 matmul (oneDNN's on a CPU)."""
    torch.set_num_threads(threads)
    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    fp32 = dtype == torch.float32
    products = [lambda: a @ b] + ([lambda: onednn_linear(a, b, None)] if ONEDNN_LINEAR and fp32 else [])
    best = float("inf")
    for product in products:
        product()
        for _ in range(reps):
            t0 = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def training_gflop_per_image(model, amp_device, batch=2):
    """GFLOP of one training step (forward and backward) per image of this MAE, counted by PyTorch on the plain
    attention path (the flop counter does not see the fused CPU kernel); the model's weights and gradients
    are left as they were."""
    from torch.utils.flop_counter import FlopCounterMode
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    use_fused_attention(model, False)
    size, chans = model.cfg.img_size, model.cfg.in_chans
    try:
        with FlopCounterMode(display=False) as counter:
            out = model(torch.zeros(batch, chans, size, size, device=amp_device),
                        torch.rand(batch, model.cfg.num_patches, generator=torch.Generator().manual_seed(0)).to(amp_device))
            out.loss.backward()
    finally:
        model.zero_grad(set_to_none=True)
        for m, was in fused.items():
            m.fused_attn = was
    return counter.get_total_flops() / batch / 1e9


# A faster path is chosen only when clearly faster: near a tie, timing noise must not flip the choice
# between runs of one machine.
MEASURED_MARGIN = 1.15
KERNEL_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "miram", "kernels.json")


def _paired_speedup(default, candidate, rounds=7):
    """Median over rounds of default's time over candidate's, each round timing both back to back after one
    untimed call of each: a transient stall (another process, a page fault) moves one round, not the
    verdict, where a best-of-rounds ratio can lock in a 'speed-up' that was only load."""
    default(), candidate()
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        default()
        t1 = time.perf_counter()
        candidate()
        ratios.append((t1 - t0) / (time.perf_counter() - t1))
    return statistics.median(ratios)


def _time_linear(dim, tokens):
    """F.linear time over oneDNN time for one forward and backward."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dim, generator=g, requires_grad=True)
    w = torch.randn(4 * dim, dim, generator=g, requires_grad=True)
    return _paired_speedup(lambda: F.linear(x, w).sum().backward(),
                           lambda: _OneDNNLinearFn.apply(x, w, None).sum().backward())


def boot_id() -> str:
    """This boot of the machine ("" where the system does not say). A virtual machine with the same CPU model
    name can come back on other hardware, so a kernel choice holds for one boot, not forever."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _measured(name, measure):
    """measure() -> a speed-up over the default path, taken once per CPU, PyTorch version, thread count and
    boot, then read back from KERNEL_CACHE, so every run during one boot of a machine, a resumed one
    included, makes the same choice. -> (faster by MEASURED_MARGIN, speed-up)."""
    key = f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{name}|median of pairs"
    try:
        with open(KERNEL_CACHE) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    boot = boot_id()
    if key not in cache or cache[key].get("boot", "") != boot:
        speedup = measure()
        cache[key] = {"speedup": round(speedup, 3), "faster": speedup >= MEASURED_MARGIN, "boot": boot}
        try:  # a cache that cannot be written only means measuring again next time
            save_json(KERNEL_CACHE, cache)
        except OSError:
            pass
    return bool(cache[key]["faster"]), cache[key]["speedup"]


def _time_bf16_block(dim):
    """fp32 time over bf16-autocast time of one transformer block's forward and backward at this width, on
    a batch of 16 x 50 tokens (pre-training's visible patches)."""
    torch.manual_seed(0)
    block = use_fused_attention(Block(dim, max(1, dim // 64), 4.0, qkv_bias=True), False)
    x = torch.randn(16, 50, dim, requires_grad=True)

    def step(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = block(x)
        y.float().sum().backward()
    return _paired_speedup(lambda: step(False), lambda: step(True))


def bf16_is_faster(dim: int):
    """Whether bf16 autocast trains faster than fp32 on this CPU: having bf16 is not enough, on some CPUs with
    AVX-512 BF16 but without AMX a training step is slower in it. -> (faster by MEASURED_MARGIN, speed-up)."""
    return _measured(f"bf16 block {dim}", lambda: _time_bf16_block(dim))


def onednn_speedup(dim: int, tokens: int = 1024):
    """Whether oneDNN's fp32 GEMM beats F.linear on this CPU for a training step's linear layers (forward and
    backward of a (tokens, dim) x (dim, 4 dim) product, the MLP's), measured rather than assumed: which is
    faster differs between CPUs. -> (faster by MEASURED_MARGIN, speed-up)."""
    return _measured(f"onednn linear {dim}", lambda: _time_linear(dim, tokens))


@dataclass
class Kernels:
    """What a run computes with, and the measurement or setting that chose each: printed at start and stored
    in the run's JSON ("kernels")."""
    device: str
    precision: str   # "bf16" (autocast) or "fp32"
    matmul: str      # the linear layers' fp32 kernel: "onednn" or "default" (F.linear, PyTorch's BLAS)
    attention: str   # "fused" (SDPA) or "plain" (q @ k -> softmax -> @ v)
    why: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"kernels: {self.device}, {self.precision}, matmul {self.matmul}, attention {self.attention} ("
                + "; ".join(f"{k}: {v}" for k, v in self.why.items()) + ")")

    def to_dict(self):
        return asdict(self)


def choose_precision(device: torch.device, amp: bool, width: int, say=print):
    """-> (bf16 autocast or not, why): resolve_amp's answer with the reason or measurement behind it."""
    if not amp:
        why = "AMP off"
    elif device.type != "cpu":
        why = "autocast on the GPU"
    elif not native_amp(device):
        why = "no native bf16 on this CPU (AVX-512 BF16 or AMX): emulated bf16 is many times slower"
    else:
        why = f"a bf16 block measured {bf16_is_faster(width)[1]:.2f}x fp32 (needs {MEASURED_MARGIN}x)"
    return resolve_amp(device, amp, say, width), why


def choose_kernels(device: torch.device, amp: bool, width: int, matmul: str = "auto", say=print) -> Kernels:
    """The precision and kernels a run at this model width uses: bf16 only where native and measured faster
    (resolve_amp); oneDNN's fp32 linear where MATMUL asks for it or, with "auto", where it measured
    MEASURED_MARGIN faster than F.linear on this CPU; the plain attention path under bf16 autocast on a CPU
    (SDPA's CPU backward is slow in bf16), fused SDPA elsewhere."""
    cpu = device.type == "cpu"
    amp, why = choose_precision(device, amp, width, say)
    why = {"precision": why}
    if not cpu or amp:
        kind, why["matmul"] = "default", "not an fp32 CPU run"
    elif matmul != "auto":
        kind, why["matmul"] = matmul, f"MATMUL={matmul}"
        if matmul == "onednn" and not ONEDNN_LINEAR:
            raise MiramError("MATMUL=onednn asked for, but this PyTorch build has no oneDNN linear")
    elif not ONEDNN_LINEAR:
        kind, why["matmul"] = "default", "this PyTorch build has no oneDNN linear"
    else:
        faster, speedup = onednn_speedup(width)
        kind = "onednn" if faster else "default"
        why["matmul"] = f"oneDNN measured {speedup:.2f}x F.linear (needs {MEASURED_MARGIN}x)"
    return Kernels(str(device), "bf16" if amp else "fp32", kind, "plain" if cpu and amp else "fused", why)


def apply_kernels(model: nn.Module, kernels: Kernels) -> nn.Module:
    """Switches a model's linear layers and attention to the chosen kernels; the maths and weights stay."""
    use_fast_linear(model, kernels.matmul == "onednn")
    return use_fused_attention(model, kernels.attention == "fused")


def tune_for(model: nn.Module, device: torch.device, amp: bool, matmul: str = "auto") -> nn.Module:
    """apply_kernels with the kernels chosen for this model on `device` (for benchmarks and tests)."""
    return apply_kernels(model, choose_kernels(device, amp, model.cfg.embed_dim, matmul, say=lambda *a: None))

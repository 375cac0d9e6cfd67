"""Self-describing checkpoints: written atomically, loaded with weights_only=True, checked against the
configuration asked for, and rebuilt into their model from the settings they carry."""
import os
import pickle
import shutil

import torch

from config import MiramError, ModelConfig
from models import MIRAM, InpaintingMIRAM, TumorClassifier
from upscaler import SuperResMIRAM
from records import temp_beside

MODEL_KINDS = {"mae": MIRAM, "inpaint": InpaintingMIRAM, "superres": SuperResMIRAM, "classifier": TumorClassifier}
# Model settings a kind of model never reads: a checkpoint that differs only there is the same model (so
# changing the classifier's FOREGROUND_THRESHOLD does not block resuming pre-training).
_OWN_SETTINGS = {"classifier": {"foreground_threshold", "conv_evidence", "conv_cell", "num_classes"}, "superres": {"superres_features"}}
UNUSED_SETTINGS = {kind: set().union(*(s for k, s in _OWN_SETTINGS.items() if k != kind)) for kind in MODEL_KINDS}
# Model settings added after checkpoints had been written: a checkpoint without one had the default.
ADDED_SETTINGS = {"pos_grid": 0, "conv_evidence": False, "conv_cell": 8, "num_classes": 2, "superres_features": 8}


def atomic_torch_save(obj, path):
    """Writes to a temporary file in the same folder, fsyncs, then renames: a crash or a full disk leaves
    the previous file as it was, and a half-written file is never under the real name."""
    _write_atomically(path, lambda f: torch.save(obj, f))


def copy_checkpoint(source, path):
    """source's bytes to path, written as atomic_torch_save writes (a checkpoint kept under another name)."""
    def copy(f):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)
    _write_atomically(path, copy)


def _write_atomically(path, write):
    tmp = None
    try:
        fd, tmp = temp_beside(path, ".pth")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) or isinstance(e.__cause__, OSError) or "write" in str(e).lower():
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise MiramError(f"{path}: could not write the checkpoint ({reason}); the previous one is kept") from None
        raise


def save_checkpoint(path, model, kind, optimizer=None, epoch=None, metrics=None, extra=None):
    """A checkpoint of plain tensors and primitives; kind is one of MODEL_KINDS. No scheduler state: the
    learning rate is a function of the step (engine.lr_at), restored with the epoch."""
    state = {"kind": kind, "model": model.state_dict(), "model_config": model.cfg.to_dict(), "epoch": epoch,
             "metrics": metrics or {}}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if extra:
        state.update(extra)
    atomic_torch_save(state, path)


def config_mismatch(saved: dict, expected: ModelConfig, ignore=()):
    """Human-readable differences between a checkpoint's model config and the one asked for."""
    want, saved = expected.to_dict(), {**ADDED_SETTINGS, **saved}
    keys = sorted((set(saved) | set(want)) - set(ignore))
    return [f"{k.upper()}: checkpoint {saved.get(k)!r} vs requested {want.get(k)!r}"
            for k in keys if saved.get(k) != want.get(k)]


def load_checkpoint(path, kind=None, expected: ModelConfig = None, map_location="cpu"):
    """Loads a checkpoint safely (weights_only=True). Refuses a missing file, a pickle that would run code,
    a checkpoint of another kind, and (when `expected` is given) one from another configuration."""
    if not os.path.isfile(path):
        raise MiramError(f"Model not found: {path} (run train.py first)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise MiramError(f"{path}: not a PyTorch checkpoint (no zip or pickle header"
                         + ("; an ONNX model belongs to --backend onnx)" if path.lower().endswith(".onnx") else ")"))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise MiramError(f"{path}: refused to load, it is not a plain-tensor checkpoint and could run code "
                         f"({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise MiramError(f"{path}: not a readable checkpoint (truncated or corrupted?): "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise MiramError(f"{path}: not a MIRAM checkpoint (no model weights or model_config)")
    if kind is not None and state.get("kind") != kind:
        raise MiramError(f"{path}: is a {state.get('kind')!r} checkpoint, expected {kind!r}")
    if expected is not None:
        diff = config_mismatch(state["model_config"], expected, UNUSED_SETTINGS.get(state.get("kind"), ()))
        if diff:
            raise MiramError(f"{path}: checkpoint from another configuration ({'; '.join(diff)})")
    return state


def model_config_from(state, path="checkpoint") -> ModelConfig:
    """The stored model settings, checked (bounded) as any setting is."""
    try:
        return ModelConfig(**state["model_config"])
    except (TypeError, MiramError) as e:
        raise MiramError(f"{path}: its stored model settings are refused ({e})") from None


def check_weights_fit(state, kind, cfg, path):
    """The stored tensors against the shapes the stored settings imply, on the meta device: nothing is
    allocated for a model whose settings and weights disagree."""
    with torch.device("meta"):
        skeleton = MODEL_KINDS[kind](cfg).state_dict()
    weights = state["model"]
    for name, t in skeleton.items():
        if name not in weights:
            raise MiramError(f"{path}: its weights lack {name}, which its stored model settings need")
        got = getattr(weights[name], "shape", None)
        if got != t.shape:
            raise MiramError(f"{path}: its weights do not match its stored model settings ({name}: "
                             f"{tuple(got) if got is not None else type(weights[name]).__name__} stored, "
                             f"{tuple(t.shape)} expected)")
    extra = sorted(set(weights) - set(skeleton))
    if extra:
        raise MiramError(f"{path}: its weights hold {len(extra)} tensor(s) its model does not have (e.g. {extra[0]})")
    for name, t in weights.items():
        # a tensor whose storage is smaller than its values (an expanded view) stands for memory never saved
        if t.numel() and t.untyped_storage().nbytes() < t.numel() * t.element_size():
            raise MiramError(f"{path}: its tensor {name} is a view of {t.untyped_storage().nbytes()} bytes standing "
                             f"for {t.numel() * t.element_size()}: not a checkpoint a run wrote")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise MiramError(f"{path}: its weights hold NaN or infinite values ({name}): a diverged or damaged run's; "
                             "use an earlier checkpoint or train again")


def build_from_checkpoint(path, kind="mae", map_location="cpu"):
    """Rebuilds the model a checkpoint describes and loads its weights (strict: every key must match)."""
    state = load_checkpoint(path, kind=kind, map_location=map_location)
    cfg = model_config_from(state, path)
    check_weights_fit(state, kind, cfg, path)
    model = MODEL_KINDS[kind](cfg)
    model.load_state_dict(state["model"])
    return model, state

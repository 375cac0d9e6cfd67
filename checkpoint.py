"""Self-describing checkpoints: written atomically, loaded with weights_only=True, checked against the
configuration asked for, and rebuilt into their model from the settings they carry."""
import os
import pickle
import tempfile

import torch

from config import MiramError, ModelConfig
from models import MIRAM, InpaintingMIRAM, TumorClassifier

MODEL_KINDS = {"mae": MIRAM, "inpaint": InpaintingMIRAM, "classifier": TumorClassifier}
TMP_PREFIX = ".tmp-"
# Model settings a kind of model never reads: a checkpoint that differs only there is the same model (so
# changing the classifier's FOREGROUND_THRESHOLD does not block resuming pre-training).
UNUSED_SETTINGS = {"mae": {"foreground_threshold"}, "inpaint": {"foreground_threshold"}}


def atomic_torch_save(obj, path):
    """Writes to a temporary file in the same folder, fsyncs, then renames: a crash or a full disk leaves
    the previous file as it was, and a half-written file is never under the real name."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pth", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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


def remove_stale_temporaries(folder):
    """Deletes temporary files a killed process left behind (they are never read as checkpoints)."""
    if not os.path.isdir(folder):
        return 0
    stale = [f for f in os.listdir(folder) if f.startswith(TMP_PREFIX)]
    for f in stale:
        os.remove(os.path.join(folder, f))
    return len(stale)


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
    want = expected.to_dict()
    keys = sorted((set(saved) | set(want)) - set(ignore))
    return [f"{k.upper()}: checkpoint {saved.get(k)!r} vs requested {want.get(k)!r}"
            for k in keys if saved.get(k) != want.get(k)]


def load_checkpoint(path, kind=None, expected: ModelConfig = None, map_location="cpu"):
    """Loads a checkpoint safely (weights_only=True). Refuses a missing file, a pickle that would run code,
    a checkpoint of another kind, and (when `expected` is given) one from another configuration."""
    if not os.path.isfile(path):
        raise MiramError(f"Model not found: {path} (run train.py first)")
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


def model_config_from(state) -> ModelConfig:
    try:
        return ModelConfig(**state["model_config"])
    except TypeError as e:
        raise MiramError(f"checkpoint model_config is not understood: {e}") from None


def build_from_checkpoint(path, kind="mae", map_location="cpu"):
    """Rebuilds the model a checkpoint describes and loads its weights (strict: every key must match)."""
    state = load_checkpoint(path, kind=kind, map_location=map_location)
    model = MODEL_KINDS[kind](model_config_from(state))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise MiramError(f"{path}: its weights do not match its stored model settings "
                         f"({str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
    return model, state

"""The deployed models on numpy and ONNX Runtime alone (no torch): the sessions, what their outputs mean
(heatmaps, classification metrics, parity with PyTorch), and the timing every benchmark uses.

`classify.py --backend onnx`, `enhance.py --backend onnx` and export_deploy.py run the exported graphs
through the classes here. A new execution provider is one entry in PROVIDERS.
"""
import json
import os
import time

import numpy as np
from skimage.transform import resize

from config import MiramError, ModelConfig
from imaging import foreground_patches

META_KEY = "miram_model_config"   # the model's settings, stored in every exported graph
KIND_KEY = "miram_model_kind"     # which of the three graphs it is
TRAINED_KEY = "miram_trained_foreground"  # the classifier: the foreground shares of the slices it learned from
CLASSES_KEY = "miram_classes"  # the classifier: its class names, in the order of its probabilities
# ONNX Runtime execution providers by device name, tried in order; the CPU one is always last.
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
# Parity thresholds, PyTorch fp32 vs ONNX Runtime fp32 on real images.
PARITY = {"max_abs": {"probability": 1e-4, "evidence": 1e-4, "last_block": 1e-4, "fine": 1e-3, "coarse": 1e-3, "restored": 1e-3},
          "min_cosine": 0.9999}


# ---- sessions ----------------------------------------------------------------------------------------

def onnx_session(path, threads=None, device="cpu"):
    """An ONNX Runtime session with every graph optimization, on the device's providers."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MiramError("the onnx backend needs onnxruntime: pip install onnxruntime") from None
    if not os.path.isfile(path):
        raise MiramError(f"Model not found: {path} (run export_deploy.py first)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    # No busy-waiting between calls: spinning threads would steal the cores from whatever runs next (PyTorch,
    # or the other sessions of a process holding several models; docs/METHODS.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [p for p in PROVIDERS[device] if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(path, opts, providers=providers)
    except Exception as e:
        raise MiramError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None


# the inputs each exported graph takes (onnx_export.GRAPHS writes them)
GRAPH_INPUTS = {"classifier": ("images", "keep", "valid"), "mae": ("images", "noise"), "inpaint": ("prefilled", "weight")}


class OnnxModel:
    kind = None  # the graph this class runs

    def __init__(self, path, threads=None, device="cpu"):
        self.session = onnx_session(path, threads, device)
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise MiramError(f"{path}: not a MIRAM export (no {META_KEY} metadata)")
        found = meta.get(KIND_KEY) or self._kind_from_inputs()
        if self.kind is not None and found != self.kind:
            raise MiramError(f"{path}: is the exported {found} model, not the {self.kind} model this needs")
        try:  # checked and bounded like any setting: it decides the patch grid the inputs are cut into
            self.model_config = ModelConfig(**json.loads(meta[META_KEY])).to_dict()
        except (ValueError, TypeError, MiramError) as e:
            raise MiramError(f"{path}: its stored model settings are refused ({e})") from None
        self._check_graph(path)
        self.path = path
        self.providers = self.session.get_providers()

    def _check_graph(self, path):
        """The metadata against the graph itself: the inputs its kind takes, images of its stored size."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        want = GRAPH_INPUTS.get(self.kind, ())
        if want and set(inputs) != set(want):
            raise MiramError(f"{path}: its metadata says {self.kind}, but its inputs ({', '.join(inputs)}) are not "
                             f"a {self.kind}'s ({', '.join(want)})")
        size = self.model_config["img_size"]
        for name, shape in inputs.items():
            spatial = [d for d in shape[-2:] if isinstance(d, int)] if name in ("images", "prefilled") else []
            if spatial and any(d != size for d in spatial):
                raise MiramError(f"{path}: its metadata says {size}-pixel images, its graph takes "
                                 f"{' x '.join(map(str, shape[-2:]))}")

    def _kind_from_inputs(self):
        # exports made before the kind was stored: their inputs say which graph they are
        names = {i.name for i in self.session.get_inputs()}
        return {"keep": "classifier", "noise": "mae", "prefilled": "inpaint"}.get(
            next((n for n in ("keep", "noise", "prefilled") if n in names), None), "unknown")


class OnnxClassifier(OnnxModel):
    kind = "classifier"

    def __init__(self, path, threads=None, foreground_threshold=None, device="cpu"):
        """foreground_threshold overrides the exported model's (for timing all patches, say)."""
        super().__init__(path, threads, device)
        self.threshold = (self.model_config["foreground_threshold"] if foreground_threshold is None
                          else foreground_threshold)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.trained_foreground = trained_range(json.loads(meta[TRAINED_KEY]), path) if TRAINED_KEY in meta else None
        self.classes = class_names(json.loads(meta[CLASSES_KEY]) if CLASSES_KEY in meta else None,
                                   self.model_config["num_classes"], path)

    def __call__(self, images):
        """images (B,1,S,S) float32 in [0,1] -> probabilities ((B,) of class 1 with two classes, (B, K) with
        more), {map name: (B,g,g)}: "evidence" (the classifier's own map, on its patch or cell grid) and
        "last_block", as the graph names its outputs."""
        images = np.ascontiguousarray(images, np.float32)
        keep, valid = foreground_patches(images, self.model_config["patch_size"], self.threshold)
        prob, *maps = self.session.run(None, {"images": images, "keep": keep, "valid": valid})
        return prob, dict(zip((o.name for o in self.session.get_outputs()[1:]), maps))


class OnnxMAE(OnnxModel):
    kind = "mae"

    def run(self, images, noise):
        """-> fine (B,1,S,S), coarse (B,1,S/2,S/2), mask (B,L)."""
        return self.session.run(None, {"images": np.ascontiguousarray(images, np.float32),
                                       "noise": np.ascontiguousarray(noise, np.float32)})

    def __call__(self, images, noise, ratio=None):
        """The Restorer's predict contract: -> fine (B,1,S,S), coarse (B,1,S/2,S/2)."""
        if ratio is not None and abs(ratio - self.model_config["mask_ratio"]) > 1e-9:
            raise MiramError(f"{self.path} was exported for mask ratio {self.model_config['mask_ratio']}, not {ratio}")
        return tuple(self.run(images, noise)[:2])


class OnnxInpainter(OnnxModel):
    kind = "inpaint"

    def __call__(self, prefilled, weight):
        """The Restorer's correct contract: (B,1,S,S) float32 each -> restored (B,1,S,S)."""
        return self.session.run(None, {"prefilled": np.ascontiguousarray(prefilled, np.float32),
                                       "weight": np.ascontiguousarray(weight, np.float32)})[0]


class OnnxUpscaler(OnnxModel):
    kind = "superres"

    def __call__(self, tiles):
        """superres.enlarge's contract: bicubic-enlarged tiles (B,1,S,S) float32 -> restored (B,1,S,S)."""
        return self.session.run(None, {"upsampled": np.ascontiguousarray(tiles, np.float32)})[0]


# ---- what the outputs mean ---------------------------------------------------------------------------

# The classifier's own map (the patches' weights in its pooled logit): the default in the figures, --predict and
# the exported graph; the others are read from attention.
DEFAULT_HEATMAP = "evidence"


def upsample_heatmaps(maps, size):
    """(B, g, g) maps -> (B, size, size), bilinear, non-negative, each summing to 1."""
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


def auroc(scores, labels):
    """Area under the ROC curve: the chance that a positive scores above a negative, a tie counting half
    (the Mann-Whitney U over both counts); NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based, a tie group sharing its mean rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def trained_range(values, path):
    """A recorded [low, high] share of the patches a classifier's training slices held, checked."""
    try:
        low, high = (float(v) for v in values)
    except (TypeError, ValueError):
        raise MiramError(f"{path}: its recorded training foreground range {values!r} is not two numbers") from None
    if not 0 <= low <= high <= 1:
        raise MiramError(f"{path}: its recorded training foreground range {values!r} is not within [0, 1]")
    return low, high


def binary_metrics(probs, labels, threshold):
    """AUROC, accuracy, sensitivity, specificity, F1 and the confusion matrix [[TN, FP], [FN, TP]]."""
    probs, labels = np.asarray(probs, float), np.asarray(labels).astype(int)
    pred = (probs >= threshold).astype(int)
    tp = int(((pred == 1) & (labels == 1)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())

    def ratio(a, b):
        return a / b if b else float("nan")
    return {"auroc": auroc(probs, labels), "accuracy": ratio(tp + tn, len(labels)), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn), "threshold": threshold,
            "confusion_matrix": [[tn, fp], [fn, tp]], "n": len(labels), "n_positive": int(labels.sum())}


def class_names(recorded, num_classes, path):
    """A classifier's class names: those it recorded (checked against its class count), or without a record
    the mask layout's two."""
    if recorded is None and num_classes == 2:
        return ["no tumor", "tumor"]
    if not (isinstance(recorded, list) and len(recorded) == num_classes and all(isinstance(c, str) for c in recorded)):
        raise MiramError(f"{path}: its class names {recorded!r} do not fit its {num_classes} classes")
    return recorded


def class_columns(probs):
    """A classifier's probabilities as one column a class: (N,) p(class 1) of two -> (N, 2); (N, K) as they are."""
    probs = np.asarray(probs, np.float64)
    return np.stack([1 - probs, probs], axis=1) if probs.ndim == 1 else probs


def tumor_probability(probs):
    """A classifier's probabilities -> p(tumor) per slice: p(class 1) of two classes (N,) as they are, and of
    K classes (N, K) the chance of any but class 0, the tumor-free reference (layouts.NEGATIVE_CLASS)."""
    probs = np.asarray(probs, np.float64)
    return probs if probs.ndim == 1 else 1.0 - probs[:, 0]


def ranking_auroc(probs, labels):
    """AUROC of two classes, or of K the macro mean of each class against the rest (NaN without two)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(int)
    if probs.ndim == 1:
        return auroc(probs, labels)
    per_class = [auroc(probs[:, k], labels == k) for k in range(probs.shape[1])]
    per_class = [a for a in per_class if a == a]
    return float(np.mean(per_class)) if len(per_class) >= 2 else float("nan")


def predicted_class(probs, threshold):
    """The class called for each slice, one rule for any number of classes: a tumor when p(tumor)
    (tumor_probability) reaches the threshold, and then, of K classes, the most probable of classes 1..K-1
    (the one whose evidence the map shows). -> (N,) ints."""
    probs = np.asarray(probs, np.float64)
    tumor = tumor_probability(probs) >= threshold
    return tumor.astype(int) if probs.ndim == 1 else np.where(tumor, 1 + probs[:, 1:].argmax(axis=1), 0)


def class_metrics(probs, labels, classes, threshold):
    """K classes, probabilities (N, K) and labels (N,) in 0..K-1, the class called by predicted_class.
    -> accuracy, macro one-vs-rest AUROC ("auroc"), each class's sensitivity (recall), specificity, AUROC
    and count, and the confusion matrix (rows the true class, columns the called one)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(int)
    pred = predicted_class(probs, threshold)
    k = probs.shape[1]
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (labels, pred), 1)

    def ratio(a, b):
        return float(a / b) if b else float("nan")
    per_class = {name: {"sensitivity": ratio(confusion[c, c], confusion[c].sum()),
                        "specificity": ratio(np.delete(np.delete(confusion, c, 0), c, 1).sum(),
                                             np.delete(confusion, c, 0).sum()),
                        "auroc": auroc(probs[:, c], labels == c), "n": int(confusion[c].sum())}
                 for c, name in enumerate(classes)}
    return {"auroc": ranking_auroc(probs, labels), "accuracy": ratio(np.trace(confusion), len(labels)),
            "macro_sensitivity": float(np.nanmean([v["sensitivity"] for v in per_class.values()])),
            "per_class": per_class, "classes": list(classes), "confusion_matrix": confusion.tolist(),
            "threshold": threshold, "n": len(labels)}


def compare(ref, got):
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    cos = float(ref @ got / max(np.linalg.norm(ref) * np.linalg.norm(got), 1e-30))
    return {"max_abs": float(np.abs(ref - got).max()), "cosine": cos}


def check_parity(results):
    bad = [f"{k}: max-abs {v['max_abs']:.2e} (limit {PARITY['max_abs'][k]:.0e}), cosine {v['cosine']:.6f}"
           for k, v in results.items() if k in PARITY["max_abs"]
           and (v["max_abs"] > PARITY["max_abs"][k] or v["cosine"] < PARITY["min_cosine"])]
    if results.get("mask_equal") is False:
        bad.append("mask: ONNX Runtime's mask differs from PyTorch's")
    if bad:
        raise MiramError("ONNX export failed parity with PyTorch: " + "; ".join(bad))


# ---- timing ------------------------------------------------------------------------------------------

def percentiles(times, batch):
    t = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "images_per_s": float(batch / np.median(t) * 1e3)}


def bench_group(runners, batch, iters, warmup, block=5):
    """Times each runner on the same inputs, in turns of `block` back-to-back calls so machine drift hits
    all alike. Each turn starts with one untimed call: PyTorch's OpenMP workers busy-wait a while after
    its calls, and a call right after them would share the cores. Timed calls are then steady back-to-back
    calls of one backend, as served."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    times = {k: [] for k in runners}
    while len(next(iter(times.values()))) < iters:
        for k, run in runners.items():
            run()  # settle: untimed
            for _ in range(min(block, iters - len(times[k]))):
                t0 = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t0)
    return {k: percentiles(v, batch) for k, v in times.items()}


def benchmark_batches(images, batch, grid, count):
    """count inputs of `batch` real slices, taken in turn through images (wrapping), with masking noise:
    every backend sees the same sequence, so images with more foreground weigh the same for all."""
    rng = np.random.default_rng(0)
    order = np.arange(count * batch) % len(images)
    return [(np.ascontiguousarray(images[order[i * batch:(i + 1) * batch]], np.float32),
             rng.random((batch, grid * grid), dtype=np.float32)) for i in range(count)]


def cycle(fn, items):
    """A runner for bench_group: each call takes the next item of the shared sequence."""
    state = {"i": 0}

    def run():
        item = items[state["i"] % len(items)]
        state["i"] += 1
        fn(*item)
    return run

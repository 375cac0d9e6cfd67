"""Export MIRAM to ONNX, prove it computes what PyTorch computes, quantize, and benchmark.

    python export_deploy.py [--iters 50] [--threads 2] [--skip-spec]

From the best checkpoints in OUTPUT_PATH it writes:
  miram_model_optimized.onnx  tumor classifier: images (B,1,S,S), the patches to encode keep (B,K) and
                              valid (B,K) (dataset.foreground_patches) -> probability (B,) and the last
                              block's CLS attention (B,g,g); when best_tumor_classifier.pth exists
  miram_mae.onnx              restoration: images (B,1,S,S) and masking noise (B,L) -> fine (B,1,S,S),
                              coarse (B,1,S/2,S/2) and mask (B,L); no random op in the graph
  miram_inpaint.onnx          inpainting (train.py --inpaint): the biharmonic pre-fill and fill weight
                              (B,1,S,S) -> the restored slice (B,1,S,S); when best_miram_inpaint.pth exists
  *_int8.onnx                 ONNX Runtime dynamic int8 variants (classifier and MAE), kept only when their measured accuracy
                              cost is within the thresholds below
  deploy_benchmark.json       parity, accuracy and latency (p50/p90/p99, images/s) at batch 1 and 16

The ONNX runtime classes at the top (OnnxClassifier, OnnxMAE) need only numpy and onnxruntime: enhance.py
and classify.py use them for `--backend onnx` without importing torch.
"""
import argparse
import dataclasses
import json
import os
import tempfile
import time
import warnings

import numpy as np

from config import MiramError, add_config_args, describe, load_config, run_cli

CLASSIFIER_ONNX = "miram_model_optimized.onnx"
MAE_ONNX = "miram_mae.onnx"
INPAINT_ONNX = "miram_inpaint.onnx"
OPSET = 18
META_KEY = "miram_model_config"
# Parity thresholds, PyTorch fp32 vs ONNX Runtime fp32 on real images.
PARITY = {"max_abs": {"probability": 1e-4, "last_block": 1e-4, "fine": 1e-3, "coarse": 1e-3, "restored": 1e-3},
          "min_cosine": 0.9999}
# A quantized variant is kept only within these accuracy costs on the validation split.
INT8_MAX_AUROC_DROP = 0.005
INT8_MAX_MEAN_PROB_CHANGE = 0.02  # AUROC on a small validation set can hide large probability changes
INT8_MAX_PSNR_DROP_DB = 0.2
BF16_SKIPPED = "this CPU has no native bf16 (AVX-512 BF16 or AMX): PyTorch emulates it, many times slower than fp32"


# ---- runtime (numpy + onnxruntime only) --------------------------------------------------------------

class _OnnxModel:
    def __init__(self, path, threads=None):
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
        # No busy-waiting between calls: spinning threads would steal the cores from whatever runs next
        # (measured: PyTorch timed right after an ORT call ran ~2x slower with spinning on).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise MiramError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise MiramError(f"{path}: not a MIRAM export (no {META_KEY} metadata)")
        self.model_config = json.loads(meta[META_KEY])
        self.path = path


class OnnxClassifier(_OnnxModel):
    def __init__(self, path, threads=None, foreground_threshold=None):
        """foreground_threshold overrides the exported model's (for timing all patches, say)."""
        super().__init__(path, threads)
        self.threshold = (self.model_config["foreground_threshold"] if foreground_threshold is None
                          else foreground_threshold)

    def __call__(self, images):
        """images (B,1,S,S) float32 in [0,1] -> probabilities (B,), {"last_block": (B,g,g)}."""
        from dataset import foreground_patches  # numpy only
        images = np.ascontiguousarray(images, np.float32)
        keep, valid = foreground_patches(images, self.model_config["patch_size"], self.threshold)
        prob, last = self.session.run(None, {"images": images, "keep": keep, "valid": valid})
        return prob, {"last_block": last}


class OnnxMAE(_OnnxModel):
    def __call__(self, images, noise, ratio=None):
        """The same contract as enhance.torch_predictor: -> fine (B,1,S,S), coarse (B,1,S/2,S/2)."""
        if ratio is not None and abs(ratio - self.model_config["mask_ratio"]) > 1e-9:
            raise MiramError(f"{self.path} was exported for mask ratio {self.model_config['mask_ratio']}, not {ratio}")
        fine, coarse, _ = self.session.run(None, {"images": np.ascontiguousarray(images, np.float32),
                                                  "noise": np.ascontiguousarray(noise, np.float32)})
        return fine, coarse


class OnnxInpainter(_OnnxModel):
    def __call__(self, prefilled, weight):
        """The same contract as enhance.torch_corrector: (B,1,S,S) float32 each -> restored (B,1,S,S)."""
        return self.session.run(None, {"prefilled": np.ascontiguousarray(prefilled, np.float32),
                                       "weight": np.ascontiguousarray(weight, np.float32)})[0]


# ---- export (torch) ----------------------------------------------------------------------------------

_ORT_OPS = {}


def ort_fused_ops():
    """ONNX Runtime's fused CPU kernels for GELU and multi-head attention (com.microsoft Gelu and
    MultiHeadAttention), for the dynamo exporter: (translation table, run_block for Encoder.forward).

    The exporter writes GELU as Div/Erf/Add/Mul/Mul, which ORT does not fuse, and attention as 5
    Transposes, 2 MatMuls and a Softmax per block; with the fused kernels the spec classifier measured
    10-14% faster in fp32 and int8. Attention is a torch custom op (eager: SDPA on the same maths) so the
    exporter sees one node to translate. The last block keeps its explicit attention: its weights are an
    output. Registered once per process."""
    if _ORT_OPS:
        return _ORT_OPS["table"], _ORT_OPS["run_block"]
    import onnx
    import onnxscript
    import torch
    import torch.nn.functional as F
    from onnxscript import opset18 as op

    from models import padding_bias

    msft = onnxscript.values.Opset("com.microsoft", 1)
    param, optional = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.FormalParameterOption.Optional
    floats = ("T", ["tensor(float)"], "")
    gelu_op = onnxscript.values.Op(msft, "Gelu", onnx.defs.OpSchema(
        "Gelu", "com.microsoft", 1, inputs=[param("X", "T")], outputs=[param("Y", "T")], type_constraints=[floats]))
    mha_op = onnxscript.values.Op(msft, "MultiHeadAttention", onnx.defs.OpSchema(
        "MultiHeadAttention", "com.microsoft", 1,
        inputs=[param("query", "T"), param("key", "T", param_option=optional), param("value", "T", param_option=optional),
                param("bias", "T", param_option=optional), param("key_padding_mask", "M", param_option=optional)],
        outputs=[param("output", "T")], type_constraints=[floats, ("M", ["tensor(int32)"], "")],
        attributes=[onnx.defs.OpSchema.Attribute("num_heads", onnx.defs.OpSchema.AttrType.INT, "heads")]))

    @torch.library.custom_op("miram::attention", mutates_args=())
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, num_heads: int) -> torch.Tensor:
        """q, k, v (B, N, D), keys (B, N) 1 = real token -> (B, N, D)"""
        B, N, D = q.shape
        heads = [t.reshape(B, N, num_heads, D // num_heads).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*heads, attn_mask=padding_bias(keys, q.dtype)).transpose(1, 2).reshape(B, N, D)

    @attention.register_fake
    def _(q, k, v, keys, num_heads):
        return torch.empty_like(q)

    def gelu_onnx(x, approximate: str = "none"):
        return gelu_op(x)

    def attention_onnx(q, k, v, keys, num_heads: int):
        return mha_op(q, k, v, None, op.Cast(keys, to=onnx.TensorProto.INT32), num_heads=num_heads)

    def run_block(block, x, keys):
        """A timm Block (pre-norm, no layer scale or q/k norm, as make_blocks builds) through the custom op."""
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(x)).split(x.shape[-1], dim=-1)
        x = x + attn.proj(attention(q, k, v, keys, attn.num_heads))
        return x + block.mlp(block.norm2(x))

    _ORT_OPS["table"] = {torch.ops.aten.gelu.default: gelu_onnx, torch.ops.miram.attention.default: attention_onnx}
    _ORT_OPS["run_block"] = run_block
    return _ORT_OPS["table"], run_block


def graphs():
    """The two exported computations as torch modules (built lazily: torch is imported here)."""
    import torch
    from models import unpatchify
    _, run_block = ort_fused_ops()

    class ClassifierGraph(torch.nn.Module):
        """The patch selection stays outside (numpy, data-dependent K); the graph encodes what it is given.
        No rollout: it needs every block's attention and cost ~15% of the latency (measured)."""
        def __init__(self, clf):
            super().__init__()
            self.clf = clf

        def forward(self, images, keep, valid):
            return classifier_outputs(self.clf, images, keep, valid, run_block)

    class MAEGraph(torch.nn.Module):
        def __init__(self, mae):
            super().__init__()
            self.mae = mae

        def forward(self, images, noise):
            out = self.mae(images, noise)
            p, c = self.mae.cfg.patch_size, self.mae.cfg.in_chans
            return unpatchify(out.pred_fine, p, c), unpatchify(out.pred_coarse, p // 2, c), out.mask

    return ClassifierGraph, MAEGraph


def classifier_outputs(clf, images, keep, valid, run_block=None):
    """The exported classifier's outputs (probability, last-block map). With run_block=None the model runs
    its own blocks, not the export's fused ones: that is the parity reference."""
    import torch
    from classify import last_block_map
    logits, atts, _, _ = clf.forward_with_attention(images, "cls", keep, valid, run_block=run_block)
    return torch.sigmoid(logits), last_block_map(atts, keep, valid, clf.encoder.grid)


def spec_models():
    """The spec-size classifier and MAE (untrained, seeded: timing only) that every latency figure uses."""
    import torch
    from config import ModelConfig
    from models import MIRAM, TumorClassifier
    spec = ModelConfig()
    torch.manual_seed(0)
    return TumorClassifier(spec).eval(), MIRAM(spec).eval()


def spec_bench_setup(threads):
    """What the benches under bench/ start from: torch at `threads` threads, the untrained spec-size
    classifier, and the demo (or configured) training and validation slices at its image size."""
    import torch
    from dataset import load_split
    torch.set_num_threads(threads)
    clf, _ = spec_models()
    cfg = load_config()
    cfg.IMG_SIZE = clf.cfg.img_size
    train, val = load_split(cfg, quiet=True)
    return clf, train, val


def export_onnx(module, example, names, outputs, path, model_config, raw_path=None, token_inputs=()):
    """Exports with a dynamic batch axis, embeds the model config, checks the graph, and saves the graph
    after ONNX Runtime's (portable) graph optimizations as a single file; raw_path also keeps the graph as
    exported (the input quantization wants: it knows the plain MatMuls, not ORT's fused ops). token_inputs
    also get a dynamic second axis (the number of encoded patches)."""
    import onnx
    import onnxruntime as ort
    import torch
    module.eval()
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)
            tokens = torch.export.Dim("tokens", min=1, max=4096)
            shapes = {n: {0: batch, 1: tokens} if n in token_inputs else {0: batch} for n in names}
            with warnings.catch_warnings():
                # One Dim shared by several inputs is meant: the exporter's note that it names the axis
                # once ("The axis name: batch will not be used ...") is no news to a user.
                warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
                prog = torch.onnx.export(module, example, dynamo=True, opset_version=OPSET, input_names=list(names),
                                         output_names=list(outputs), dynamic_shapes=shapes, verbose=False,
                                         custom_translation_table=ort_fused_ops()[0])
            prog.save(raw)
            model = onnx.load(raw)  # pulls any external .data file back in: one self-contained file
            onnx.checker.check_model(model)
        except Exception as e:
            raise MiramError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]} "
                             "(pip install onnx onnxruntime onnxscript; check PyTorch version compatibility)") from None
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(model_config)
        onnx.save(model, raw)
        if raw_path:
            onnx.save(model, raw_path)
        opts = ort.SessionOptions()
        # EXTENDED, not ALL: ALL adds layout changes tied to this CPU; the saved graph must stay portable.
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
        os.replace(opts.optimized_model_filepath, path)
    return path


def quantize_int8(src, dst):
    """ONNX Runtime dynamic int8: per-channel QInt8 weights (QUInt8 measured slower on this CPU kind),
    activations quantized at run time, after ORT's recommended shape-inference pre-processing.

    Weights use 7 bits (reduce_range): CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8
    activations by s8 weights with VPMADDUBSW, whose pairwise int16 sums saturate with full-range weights.
    Measured on an AVX2 CPU (AMD Zen 3), demo classifier: 8-bit weights changed probabilities by 0.12 on
    average (at most 0.30) and masked PSNR by -0.34 dB; 7-bit by 0.004 (0.022) and -0.03 dB, no slower."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as tmp:
        prepared = os.path.join(tmp, "prep.onnx")
        quant_pre_process(src, prepared, skip_symbolic_shape=True)
        quantize_dynamic(prepared, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return dst


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


# ---- benchmark ---------------------------------------------------------------------------------------

def percentiles(times, batch):
    t = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "images_per_s": float(batch / np.median(t) * 1e3)}


def bench_group(runners, batch, iters, warmup, block=5):
    """Times each runner on the same inputs, in turns of `block` back-to-back calls so machine drift hits
    all alike. Each turn starts with one untimed call: PyTorch's OpenMP workers busy-wait a while after
    its calls, and a call right after them shared the cores (measured: ORT fp32 right after PyTorch
    ~1-2 ms slower of ~15). Timed calls are then steady back-to-back calls of one backend, as served."""
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


def model_runners(kind, torch_model, onnx_paths, inputs, threads, foreground_threshold=None):
    """Callables for every backend; each call takes the next input of the shared sequence."""
    import torch
    from models import autocast, native_amp
    cpu = torch.device("cpu")
    tensors = [(torch.from_numpy(x), torch.from_numpy(n)) for x, n in inputs]

    def cycle(fn, items):
        state = {"i": 0}

        def run():
            item = items[state["i"] % len(items)]
            state["i"] += 1
            fn(*item)
        return run

    def torch_call(amp):
        def call(x, n):
            with torch.no_grad(), autocast(cpu, amp):
                torch_model(x) if kind == "classifier" else torch_model(x, n)
        return call
    runners = {"torch-fp32": cycle(torch_call(False), tensors)}
    if native_amp(cpu):  # elsewhere bf16 is emulated, many times slower: not timed (the report says so)
        runners["torch-bf16"] = cycle(torch_call(True), tensors)
    for backend, path in onnx_paths.items():
        if kind == "classifier":
            m = OnnxClassifier(path, threads, foreground_threshold)
            runners[backend] = cycle(lambda x, n, m=m: m(x), inputs)
        else:
            m = OnnxMAE(path, threads)
            runners[backend] = cycle(lambda x, n, m=m: m(x, n), inputs)
    return runners


# ---- accuracy of the variants ------------------------------------------------------------------------

def classifier_accuracy(paths, images, labels, threads):
    from classify import binary_metrics
    out = {}
    for backend, path in paths.items():
        clf = OnnxClassifier(path, threads)
        probs = np.concatenate([clf(images[i:i + 16])[0] for i in range(0, len(images), 16)])
        out[backend] = {"auroc": binary_metrics(probs, labels, 0.5)["auroc"], "probs": probs}
    return out


def mae_psnr(paths, images, noise, patch, threads):
    """Masked-patch PSNR (fine scale) of each backend on the same seeded masks."""
    out = {}
    for backend, path in paths.items():
        mae = OnnxMAE(path, threads)
        vals = []
        for i in range(0, len(images), 16):
            x, n = images[i:i + 16], noise[i:i + 16]
            fine, _, mask = mae.session.run(None, {"images": x, "noise": n})
            g = x.shape[-1] // patch
            hole = np.repeat(np.repeat(mask.reshape(-1, g, g), patch, 1), patch, 2)[:, None]
            err = ((np.clip(fine, 0, 1) - x) ** 2 * hole).sum(axis=(1, 2, 3)) / hole.sum(axis=(1, 2, 3))
            vals.append(10 * np.log10(1 / np.maximum(err, 1e-12)))
        out[backend] = float(np.concatenate(vals).mean())
    return out


# ---- main --------------------------------------------------------------------------------------------

def get_args_parser():
    p = argparse.ArgumentParser("MIRAM ONNX export and benchmark")
    p.add_argument("--iters", type=int, default=50, help="timed iterations at batch 1 (batch 16: a fifth)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime alike")
    p.add_argument("--skip-spec", action="store_true", help="do not time the spec-size model")
    p.add_argument("--max-images", type=int, default=64, help="validation images for parity and accuracy")
    return add_config_args(p)


def export_all(out_dir, prefix, clf, mae, example, noise_example, inpainter=None):
    """Exports the graphs whose model is given into out_dir, the classifier's and the MAE's with their
    int8 variants (the inpainter's accuracy in int8 is not measured: fp32 only)."""
    ClassifierGraph, MAEGraph = graphs()
    paths = {}
    jobs = []
    if inpainter is not None:
        weight = example.new_zeros(example.shape)
        weight[..., 8:24, 8:24] = 1.0
        jobs.append(("inpaint", inpainter, (example, weight), ["prefilled", "weight"], ["restored"], INPAINT_ONNX,
                     inpainter.cfg))
    if clf is not None:
        jobs.append(("classifier", ClassifierGraph(clf), (example, *clf.foreground(example)),
                     ["images", "keep", "valid"], ["probability", "last_block"], CLASSIFIER_ONNX, clf.cfg))
    if mae is not None:
        jobs.append(("mae", MAEGraph(mae), (example, noise_example), ["images", "noise"], ["fine", "coarse", "mask"],
                     MAE_ONNX, mae.cfg))
    for kind, graph, args, inputs, outputs, name, mcfg in jobs:
        path = os.path.join(out_dir, prefix + name)
        raw = path.replace(".onnx", ".raw.onnx")
        try:
            export_onnx(graph, args, inputs, outputs, path, mcfg.to_dict(), raw_path=raw, token_inputs=("keep", "valid"))
            paths[kind] = {"ort-fp32": path}
            if kind != "inpaint":
                paths[kind]["ort-int8"] = quantize_int8(raw, path.replace(".onnx", "_int8.onnx"))
        finally:
            if os.path.exists(raw):
                os.remove(raw)
    return paths


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    print(describe(cfg))
    import torch
    from dataset import load_split
    from models import TumorClassifier, build_from_checkpoint, mask_noise, native_amp
    torch.set_num_threads(args.threads)
    out_dir = cfg.OUTPUT_PATH
    mae_path = os.path.join(out_dir, "best_miram_mae.pth")
    mae, mae_state = build_from_checkpoint(mae_path, "mae")
    trained_on = [(mae_path, mae_state)]  # the accuracy figures below must come from subjects none learned from

    def load_if_present(path, kind):
        if not os.path.isfile(path):
            return None
        model, state = build_from_checkpoint(path, kind)
        trained_on.append((path, state))
        return model.eval()

    clf_path = os.path.join(out_dir, "best_tumor_classifier.pth")
    clf = load_if_present(clf_path, "classifier")
    if clf is None:
        print(f"no {clf_path}: exporting the restoration model only (run classify.py for the classifier)")
    inpainter = load_if_present(os.path.join(out_dir, "best_miram_inpaint.pth"), "inpaint")
    mc = mae.cfg
    cfg.IMG_SIZE = mc.img_size
    _, val = load_split(cfg, quiet=True, trained_on=trained_on)
    val = val.subset(range(min(args.max_images, len(val))))
    images = val.images.numpy()
    L = (mc.img_size // mc.patch_size) ** 2
    noise = mask_noise(len(images), L, cfg.EVAL_SEED).numpy()
    example = torch.from_numpy(images[:2])
    paths = export_all(out_dir, "", clf, mae.eval(), example, torch.from_numpy(noise[:2]), inpainter)
    print(f"exported (opset {OPSET}, dynamic batch, checked, ORT-optimized): "
          + ", ".join(p for group in paths.values() for p in group.values()))

    # parity on real validation images
    parity = {}
    with torch.no_grad():
        if clf is not None:
            x = torch.from_numpy(images)
            ref = classifier_outputs(clf, x, *clf.foreground(x))
            prob, maps = OnnxClassifier(paths["classifier"]["ort-fp32"], args.threads)(images)
            parity["classifier"] = {"probability": compare(ref[0], prob),
                                    "last_block": compare(ref[1], maps["last_block"])}
        ref = graphs()[1](mae)(torch.from_numpy(images), torch.from_numpy(noise))
        sess = OnnxMAE(paths["mae"]["ort-fp32"], args.threads).session
        fine, coarse, mask = sess.run(None, {"images": images, "noise": noise})
        parity["mae"] = {"fine": compare(ref[0], fine), "coarse": compare(ref[1], coarse),
                         "mask_equal": bool(np.array_equal(ref[2].numpy(), mask))}
        if inpainter is not None:
            from dataset import damaged_set
            prefilled, weight, _ = damaged_set(images[:16], 1, cfg.EVAL_SEED)
            ref = inpainter(prefilled, weight)
            got = OnnxInpainter(paths["inpaint"]["ort-fp32"], args.threads)(prefilled.numpy(), weight.numpy())
            parity["inpaint"] = {"restored": compare(ref, got)}
    for group in parity.values():
        check_parity(group)
    print("parity PyTorch vs ONNX Runtime fp32 on", len(images), "validation images: " + "; ".join(
        f"{m}/{k} max-abs {v['max_abs']:.1e} cos {v['cosine']:.6f}" for m, g in parity.items()
        for k, v in g.items() if isinstance(v, dict)) + f" (limits {PARITY})")

    # accuracy of the int8 variants; drop those that cost too much
    accuracy = {}
    if clf is not None:
        acc = classifier_accuracy(paths["classifier"], images, val.labels.numpy(), args.threads)
        drop = acc["ort-fp32"]["auroc"] - acc["ort-int8"]["auroc"]
        change = np.abs(acc["ort-fp32"]["probs"] - acc["ort-int8"]["probs"])
        keep = not (drop > INT8_MAX_AUROC_DROP or change.mean() > INT8_MAX_MEAN_PROB_CHANGE)
        accuracy["classifier"] = {"auroc_fp32": acc["ort-fp32"]["auroc"], "auroc_int8": acc["ort-int8"]["auroc"],
                                  "auroc_drop": drop, "mean_abs_prob_diff": float(change.mean()),
                                  "max_abs_prob_diff": float(change.max()), "int8_kept": keep,
                                  "limit": INT8_MAX_AUROC_DROP, "limit_mean_prob_diff": INT8_MAX_MEAN_PROB_CHANGE}
    ps = mae_psnr(paths["mae"], images, noise, mc.patch_size, args.threads)
    accuracy["mae"] = {"masked_psnr_fp32": ps["ort-fp32"], "masked_psnr_int8": ps["ort-int8"],
                       "psnr_drop_db": ps["ort-fp32"] - ps["ort-int8"],
                       "int8_kept": not (ps["ort-fp32"] - ps["ort-int8"] > INT8_MAX_PSNR_DROP_DB),
                       "limit_db": INT8_MAX_PSNR_DROP_DB}
    for kind, a in accuracy.items():
        if not a["int8_kept"]:
            os.remove(paths[kind].pop("ort-int8"))
        print(f"int8 {kind}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in a.items()))

    # latency: the checkpoint's models and, beside them, the spec-size models (untrained weights)
    results = []
    targets = [("checkpoint", clf, mae, paths, images, None)]
    tmp = None
    if not args.skip_spec:
        tmp = tempfile.TemporaryDirectory(dir=out_dir)
        s_clf, s_mae = spec_models()
        spec = s_clf.cfg
        spec_images = torch.nn.functional.interpolate(torch.from_numpy(images), size=spec.img_size, mode="bilinear")
        s_paths = export_all(tmp.name, "spec_", s_clf, s_mae, spec_images[:2],
                             torch.rand(2, (spec.img_size // spec.patch_size) ** 2))
        for kind in ("classifier", "mae"):  # the same rule as the checkpoint's: only kept variants
            if kind in accuracy and not accuracy[kind]["int8_kept"]:
                s_paths[kind].pop("ort-int8")
        targets.append(("spec", s_clf, s_mae, s_paths, spec_images.numpy(), None))
        # the same spec-size classifier made to encode every patch: what the foreground selection saves
        s_all = TumorClassifier(dataclasses.replace(spec, foreground_threshold=-1.0)).eval()
        s_all.load_state_dict(s_clf.state_dict())
        targets.append(("spec-all-patches", s_all, None, s_paths, spec_images.numpy(), -1.0))
    for size_name, c, m, ps_, imgs, threshold in targets:
        for kind, model in (("classifier", c), ("mae", m)):
            if model is None:
                continue
            mcfg = model.cfg
            grid = mcfg.img_size // mcfg.patch_size
            for batch, iters in ((1, args.iters), (16, max(3, args.iters // 5))):
                inputs = benchmark_batches(imgs, batch, grid, max(iters, args.warmup))
                runners = model_runners(kind, model, ps_[kind], inputs, args.threads, threshold)
                patches = grid * grid
                if kind == "classifier":
                    from dataset import foreground_patches
                    t = mcfg.foreground_threshold
                    patches = float(np.mean([foreground_patches(x, mcfg.patch_size, t)[1].sum(1).mean()
                                             for x, _ in inputs]))
                for backend, r in bench_group(runners, batch, iters, args.warmup).items():
                    results.append({"model": kind, "size": size_name, "backend": backend, "batch": batch,
                                    "patches_per_image": patches, **r})
    if tmp is not None:
        tmp.cleanup()
    report = {"threads": args.threads, "opset": OPSET, "checkpoint_epoch": mae_state.get("epoch"),
              "results": results, "parity": parity, "parity_limits": PARITY, "accuracy": accuracy,
              "files": {k: v for k, v in paths.items()},
              "gpu": "not measured: no GPU on this machine" if not torch.cuda.is_available() else "see results"}
    if not native_amp(torch.device("cpu")):
        report["skipped"] = {"torch-bf16": BF16_SKIPPED}
    path = os.path.join(out_dir, "deploy_benchmark.json")
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"\nlatency, {args.threads} threads (ms; images/s from the median)")
    print(f"{'model':10s} {'size':16s} {'patches':>7s} {'backend':11s} {'batch':>5s} {'p50':>8s} {'p90':>8s} "
          f"{'p99':>8s} {'img/s':>8s}")
    for r in results:
        print(f"{r['model']:10s} {r['size']:16s} {r['patches_per_image']:7.1f} {r['backend']:11s} {r['batch']:5d} "
              f"{r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['p99_ms']:8.2f} {r['images_per_s']:8.1f}")
    if "skipped" in report:
        print(f"torch-bf16 not timed: {BF16_SKIPPED}")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    run_cli(main)

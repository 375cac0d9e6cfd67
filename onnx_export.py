"""Exporting MIRAM to ONNX: the graphs (with ONNX Runtime's fused GELU and attention), the export itself
with its checks, dynamic int8 quantization, and the PyTorch and ONNX Runtime runners the benchmarks time.
Used by export_deploy.py and the scripts under bench/; the exported graphs run in runtime.py, without torch.
"""
import json
import os
import tempfile
import warnings

import onnx
import onnxruntime as ort
import onnxscript
import timm
import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxscript import opset18 as op
from torch.utils.flop_counter import FlopCounterMode

from config import ARTIFACTS, MiramError, ModelConfig
from hardware import autocast, native_amp, use_fused_attention
from heatmaps import evidence_map, last_block_map
from models import MIRAM, TumorClassifier, class_probabilities, padding_bias, unpatchify
from runtime import CLASSES_KEY, KIND_KEY, META_KEY, TRAINED_KEY, OnnxClassifier, OnnxMAE, cycle, onnx_session

OPSET = 18
# graph kind -> (artifact name in config.ARTIFACTS, input names, output names)
GRAPHS = {"classifier": ("classifier_onnx", ["images", "keep", "valid"], ["probability", "evidence", "last_block"]),
          "mae": ("mae_onnx", ["images", "noise"], ["fine", "coarse", "mask"]),
          "inpaint": ("inpaint_onnx", ["prefilled", "weight"], ["restored"]),
          "superres": ("superres_onnx", ["upsampled"], ["restored"])}


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
    """The classifier and MAE graphs as torch modules (the inpainter exports as it is)."""
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
    """The exported classifier's outputs (probability, the patch-evidence map, the last block's CLS
    attention map). With run_block=None the model runs its own blocks, not the export's fused ones: that is
    the parity reference."""
    logits, atts, _, _, scores, where = clf.forward_with_attention(images, "last", keep, valid, run_block=run_block)
    return (class_probabilities(logits), evidence_map(scores, where, valid, clf.map_grid),
            last_block_map(atts, keep, valid, clf.encoder.grid))


def spec_models():
    """The spec-size classifier and MAE (untrained, seeded: timing only) that every latency figure uses."""
    spec = ModelConfig()
    torch.manual_seed(0)
    return TumorClassifier(spec).eval(), MIRAM(spec).eval()


def export_onnx(module, example, names, outputs, path, model_config, kind, raw_path=None, token_inputs=(),
                fused=True, extra_meta=None):
    """Exports with a dynamic batch axis, embeds the model config, checks the graph, and saves the graph
    after ONNX Runtime's (portable) graph optimizations as a single file; raw_path also keeps the graph as
    exported (the input quantization wants: it knows the plain MatMuls, not ORT's fused ops). token_inputs
    also get a dynamic second axis (the number of encoded patches). fused=False: the exporter's own
    decomposition, as a plain export would be."""
    module.eval()
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)
            tokens = torch.export.Dim("tokens", min=1, max=4096)
            # by position, as the inputs are given: a module's own argument names need not be ours
            shapes = tuple({0: batch, 1: tokens} if n in token_inputs else {0: batch} for n in names)
            with warnings.catch_warnings():
                # One Dim shared by several inputs is meant: the exporter's note that it names the axis
                # once ("The axis name: batch will not be used ...") is no news to a user.
                warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used", category=UserWarning)
                # ours skip the exporter's own graph optimizer, a slow pass: ONNX Runtime's, run on every graph
                # below, does what it does; the peer keeps the exporter's defaults
                prog = torch.onnx.export(module, example, dynamo=True, opset_version=OPSET, input_names=list(names),
                                         output_names=list(outputs), dynamic_shapes=shapes, verbose=False,
                                         custom_translation_table=ort_fused_ops()[0] if fused else None,
                                         optimize=not fused)
            prog.save(raw)
            model = onnx.load(raw)  # pulls any external .data file back in: one self-contained file
            onnx.checker.check_model(model)
        except Exception as e:
            raise MiramError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]} "
                             "(pip install onnx onnxruntime onnxscript; check PyTorch version compatibility)") from None
        for key, value in ((META_KEY, json.dumps(model_config)), (KIND_KEY, kind), *(extra_meta or {}).items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
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
    """ONNX Runtime dynamic int8: per-channel QInt8 weights (QUInt8 ran slower),
    activations quantized at run time, after ORT's recommended shape-inference pre-processing.

    Weights use 7 bits (reduce_range): CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8
    activations by s8 weights with VPMADDUBSW, whose pairwise int16 sums saturate with full-range weights
    (docs/METHODS.md has what 8-bit weights cost there)."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as tmp:
        prepared = os.path.join(tmp, "prep.onnx")
        quant_pre_process(src, prepared, skip_symbolic_shape=True)
        quantize_dynamic(prepared, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return dst


def export_all(out_dir, prefix, clf, mae, example, noise_example, inpainter=None, clf_example=None,
               clf_state=None, upscaler=None):
    """Exports the graphs whose model is given into out_dir, each with its int8 variant but the inpainter's
    (its accuracy in int8 is not measured: fp32 only). clf_example: the
    classifier's example images where it reads another size than the others. clf_state: the classifier
    checkpoint, whose record of its classes and training foreground the graph's metadata keeps."""
    ClassifierGraph, MAEGraph = graphs()
    jobs = {}
    if inpainter is not None:
        weight = example.new_zeros(example.shape)
        weight[..., 8:24, 8:24] = 1.0
        jobs["inpaint"] = (inpainter, (example, weight), inpainter.cfg)
    if upscaler is not None:
        jobs["superres"] = (upscaler, (example,), upscaler.cfg)
    if clf is not None:
        x = example if clf_example is None else clf_example
        jobs["classifier"] = (ClassifierGraph(clf), (x, *clf.foreground(x)), clf.cfg)
    if mae is not None:
        jobs["mae"] = (MAEGraph(mae), (example, noise_example), mae.cfg)
    paths = {}
    for kind, (graph, args, mcfg) in jobs.items():
        artifact, inputs, outputs = GRAPHS[kind]
        path = os.path.join(out_dir, prefix + ARTIFACTS[artifact])
        raw = path.replace(".onnx", ".raw.onnx")
        try:
            meta = classifier_metadata(clf_state) if kind == "classifier" else {}
            export_onnx(graph, args, inputs, outputs, path, mcfg.to_dict(), kind, raw_path=raw,
                        token_inputs=("keep", "valid"), extra_meta=meta)
            paths[kind] = {"ort-fp32": path}
            if kind != "inpaint":  # its int8 accuracy is not measured: fp32 only
                paths[kind]["ort-int8"] = quantize_int8(raw, path.replace(".onnx", "_int8.onnx"))
        finally:
            if os.path.exists(raw):
                os.remove(raw)
    return paths


def classifier_metadata(state):
    """What --predict needs beside the weights, from a classifier checkpoint: its class names and the
    foreground range of its training slices, where recorded."""
    state = state or {}
    return {key: json.dumps(state[name]) for key, name in ((CLASSES_KEY, "classes"), (TRAINED_KEY, "trained_foreground"))
            if state.get(name)}


# ---- the peer: what an engineer would deploy instead ----------------------------------------------------

PEER = "timm vit_small_patch16_224, 1 channel, 1 output, all 197 tokens, plain ONNX export"


def peer_model(cfg: ModelConfig):
    """timm's ViT-S/16 at the classifier's image size and channels, one output (untrained: timing only)."""
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch16_224", pretrained=False, in_chans=cfg.in_chans, num_classes=1,
                             img_size=cfg.img_size).eval()


def export_peer(out_dir, peer, example):
    """The peer exported as a user would (the exporter's defaults, a dynamic batch) and its dynamic int8
    (the same quantization as ours)."""
    path = os.path.join(out_dir, "peer_vit_small.onnx")
    raw = path.replace(".onnx", ".raw.onnx")
    try:
        export_onnx(peer, (example,), ["images"], ["logit"], path, {"peer": PEER}, "peer", raw_path=raw, fused=False)
        return {"ort-fp32": path, "ort-int8": quantize_int8(raw, path.replace(".onnx", "_int8.onnx"))}
    finally:
        if os.path.exists(raw):
            os.remove(raw)


def gflop_per_image(kind, model, inputs):
    """Multiply-adds x 2 per image of a forward pass, counted by PyTorch over the benchmark's inputs (attention
    on its plain path: the fused kernel is not counted on CPU)."""
    use_fused_attention(model, False)
    counter = FlopCounterMode(display=False)
    images = 0
    with torch.no_grad(), counter:
        for x, n in inputs:
            x = torch.from_numpy(x)
            model(x) if kind in ("classifier", "peer") else model(x, torch.from_numpy(n))
            images += len(x)
    use_fused_attention(model, True)
    return counter.get_total_flops() / images / 1e9


def model_runners(kind, torch_model, onnx_paths, inputs, threads, foreground_threshold=None, bf16=True,
                  with_torch=True):
    """Callables for every backend (torch-bf16 if asked and native; with_torch=False: ONNX Runtime's only);
    each call takes the next input of the shared sequence."""
    cpu = torch.device("cpu")
    tensors = [(torch.from_numpy(x), torch.from_numpy(n)) for x, n in inputs]

    def torch_call(amp):
        def call(x, n):
            with torch.no_grad(), autocast(cpu, amp):
                torch_model(x) if kind in ("classifier", "peer") else torch_model(x, n)
        return call
    runners = {}
    if with_torch:
        runners["torch-fp32"] = cycle(torch_call(False), tensors)
        if bf16 and native_amp(cpu):  # elsewhere bf16 is emulated, many times slower: not timed (the report says so)
            runners["torch-bf16"] = cycle(torch_call(True), tensors)
    for backend, path in onnx_paths.items():
        if kind == "peer":
            sess = onnx_session(path, threads)
            runners[backend] = cycle(lambda x, n, sess=sess: sess.run(None, {"images": x}), inputs)
        elif kind == "classifier":
            m = OnnxClassifier(path, threads, foreground_threshold)
            runners[backend] = cycle(lambda x, n, m=m: m(x), inputs)
        else:
            m = OnnxMAE(path, threads)
            runners[backend] = cycle(lambda x, n, m=m: m(x, n), inputs)
    return runners



"""Export MIRAM to ONNX, prove it computes what PyTorch computes, quantize, and benchmark.

    python export_deploy.py [--iters 50] [--threads 2] [--skip-spec] [--short]

From the best checkpoints in OUTPUT_PATH it writes:
  miram_model_optimized.onnx  tumor classifier: images (B,1,S,S), the patches to encode keep (B,K) and
                              valid (B,K) (imaging.foreground_patches) -> probability (B,), the patch-evidence
                              map (B,g,g) and the last block's CLS attention (B,g,g); when
                              best_tumor_classifier.pth exists
  miram_mae.onnx              restoration: images (B,1,S,S) and masking noise (B,L) -> fine (B,1,S,S),
                              coarse (B,1,S/2,S/2) and mask (B,L); no random op in the graph
  miram_inpaint.onnx          inpainting (train.py --inpaint): the biharmonic pre-fill and fill weight
                              (B,1,S,S) -> the restored slice (B,1,S,S); when best_miram_inpaint.pth exists
  miram_superres.onnx         super-resolution (train.py --superres): a bicubic-enlarged tile (B,1,S,S) -> the
                              restored tile; when best_miram_superres.pth exists
  *_int8.onnx                 ONNX Runtime dynamic int8 variants (classifier and MAE), kept only when their measured accuracy
                              cost is within the thresholds below
  deploy_benchmark.json       parity, accuracy and latency (p50/p90/p99, images/s) at batch 1 and 16

The graphs are built and exported by onnx_export.py; they run through runtime.py (numpy and onnxruntime
only), as `classify.py --backend onnx` and `enhance.py --backend onnx` run them.
"""
import argparse
import dataclasses
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from checkpoint import build_from_checkpoint
from config import MiramError, ModelConfig, add_config_args, describe, load_config
from dataset import load_split
from hardware import matmul_gflops, native_amp, resolve_amp
from losses import psnr
from models import TumorClassifier, mask_noise, unpatchify
from onnx_export import (OPSET, PEER, classifier_outputs, export_all, export_peer, gflop_per_image, graphs,
                         model_runners, peer_model, spec_models)
from records import output_lock, run_cli, run_info, save_json, save_stages, stage
from restoration import damaged_set
from superres import TIMED_SIDE, time_enlargement
from imaging import foreground_patches
from runtime import (PARITY, OnnxClassifier, OnnxInpainter, OnnxMAE, OnnxUpscaler, bench_group, benchmark_batches,
                     check_parity, compare, ranking_auroc)

# A quantized variant is kept only within these accuracy costs on the validation split.
INT8_MAX_AUROC_DROP = 0.005
INT8_MAX_MEAN_PROB_CHANGE = 0.02  # AUROC on a small validation set can hide large probability changes
INT8_MAX_PSNR_DROP_DB = 0.2
FLOP_COUNT_IMAGES = 10  # the images a row's GFLOP per image is counted on
BF16_SKIPPED = "this CPU has no native bf16 (AVX-512 BF16 or AMX): PyTorch emulates it, many times slower than fp32"
BF16_SLOWER = "--short: bf16 measured no faster than fp32 on this CPU (hardware.resolve_amp); the full table times it"


# ---- accuracy of the variants ------------------------------------------------------------------------

def classifier_accuracy(paths, images, labels, threads):
    out = {}
    for backend, path in paths.items():
        clf = OnnxClassifier(path, threads)
        probs = np.concatenate([clf(images[i:i + 16])[0] for i in range(0, len(images), 16)])
        out[backend] = {"auroc": ranking_auroc(probs, labels), "probs": probs}
    return out


def mae_psnr(paths, images, noise, patch, threads):
    """Masked-patch PSNR (fine scale) of each backend on the same seeded masks."""
    out = {}
    for backend, path in paths.items():
        mae = OnnxMAE(path, threads)
        vals = []
        for i in range(0, len(images), 16):
            x, n = images[i:i + 16], noise[i:i + 16]
            fine, _, mask = mae.run(x, n)
            hole = unpatchify(torch.from_numpy(mask)[..., None].expand(-1, -1, patch * patch), patch, 1)
            vals.append(psnr(torch.from_numpy(fine).clamp(0, 1), torch.from_numpy(x), weight=hole))
        out[backend] = float(torch.cat(vals).clamp(max=120).mean())
    return out


def superres_psnr(paths, images, threads):
    """PSNR inside the head of each backend's 2x enlargement of the validation slices, halved by area averaging."""
    from degradations import degrade, upsample
    from superres import head_psnr
    tiles = np.stack([upsample(degrade(img[0], "area"))[None] for img in images]).astype(np.float32)
    out = {}
    for backend, path in paths.items():
        upscale = OnnxUpscaler(path, threads)
        out[backend] = head_psnr(np.concatenate([upscale(tiles[i:i + 16]) for i in range(0, len(tiles), 16)]), images)
    return out


def psnr_cost(ps, name):
    """What int8 costs a model judged by PSNR ({backend: dB}): kept within INT8_MAX_PSNR_DROP_DB."""
    drop = ps["ort-fp32"] - ps["ort-int8"]
    return {f"{name}_fp32": ps["ort-fp32"], f"{name}_int8": ps["ort-int8"], "psnr_drop_db": drop,
            "int8_kept": not (drop > INT8_MAX_PSNR_DROP_DB), "limit_db": INT8_MAX_PSNR_DROP_DB}


# ---- main --------------------------------------------------------------------------------------------

def get_args_parser():
    p = argparse.ArgumentParser("MIRAM ONNX export and benchmark")
    p.add_argument("--iters", type=int, default=50, help="timed iterations at batch 1 (batch 16: a fifth)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime alike")
    p.add_argument("--skip-spec", action="store_true", help="do not time the spec-size models")
    p.add_argument("--skip-peer", action="store_true", help="do not time the peer (timm ViT-S/16, plain ONNX export)")
    p.add_argument("--max-images", type=int, default=64, help="validation images for parity and accuracy")
    p.add_argument("--superres-side", type=int, default=TIMED_SIDE,
                   help="the side of the slice the super-resolution model is timed enlarging")
    p.add_argument("--short", action="store_true",
                   help="what make demo runs: time only the rows the deployment goals compare (the checkpoint's "
                        "models, the spec-size classifier, the peer), torch-bf16 only where it measures faster "
                        "than fp32 on this CPU; the full table is the default")
    return add_config_args(p, "export_deploy")


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    with output_lock(cfg.OUTPUT_PATH):
        report = run(args, cfg)
        save_stages(cfg.artifact("stage_times", "_export"))
        return report


def run(args, cfg):
    for name in ("iters", "threads", "max_images", "superres_side"):
        if getattr(args, name) < 1:
            raise MiramError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise MiramError(f"--warmup: must be >= 0, got {args.warmup}")
    torch.set_num_threads(args.threads)
    m = load_models(cfg)
    cfg = cfg.adopt(m.mae.cfg)
    print(describe(cfg, script="export_deploy"))
    with stage("data read"):
        val, clf_val = validation_sets(cfg, m, args.max_images)
    images, clf_images = val.images.numpy(), clf_val.images.numpy()
    noise = mask_noise(len(images), m.mae.cfg.num_patches, cfg.EVAL_SEED).numpy()
    with stage("trained models exported, int8 quantized"):
        paths = export_all(cfg.OUTPUT_PATH, "", m.clf, m.mae, torch.from_numpy(images[:2]), torch.from_numpy(noise[:2]),
                           m.inpainter, clf_example=torch.from_numpy(clf_images[:2]),
                           clf_state=m.clf_state if m.clf is not None else None, upscaler=m.upscaler)
    print(f"exported (opset {OPSET}, dynamic batch, checked, ORT-optimized): "
          + ", ".join(p for group in paths.values() for p in group.values()))
    with stage("parity, int8 accuracy"):
        parity = parity_on(m, paths, images, noise, clf_images, cfg.EVAL_SEED, args.threads)
        accuracy = int8_costs(m, paths, images, noise, clf_images, clf_val.labels.numpy(), args.threads)
    with tempfile.TemporaryDirectory(dir=cfg.OUTPUT_PATH) as tmp:
        with stage("spec-size models and the peer exported"):
            targets = latency_targets(args, m, paths, accuracy, images, clf_images, tmp)
        with stage("latency timed"):
            results, peak, bf16 = time_targets(args, targets)
    if m.upscaler is not None:
        with stage("super-resolution timed"):
            superres_timing = time_enlargement(m.upscaler, paths["superres"], images[0, 0], args.threads, args.iters,
                                               args.warmup, side=args.superres_side)
    report = {"threads": args.threads, "opset": OPSET, "checkpoint_epoch": m.mae_state.get("epoch"),
              "matmul_gflops": peak, "peer": PEER,
              "results": results, "parity": parity, "parity_limits": PARITY, "accuracy": accuracy,
              "files": {k: v for k, v in paths.items()},
              "gpu": "not measured: no GPU on this machine" if not torch.cuda.is_available() else "see results",
              "run": run_info()}
    if m.upscaler is not None:
        report["superres_slice"] = superres_timing
    if not bf16:
        report["skipped"] = {"torch-bf16": BF16_SKIPPED if not native_amp(torch.device("cpu")) else BF16_SLOWER}
    path = cfg.artifact("deploy_benchmark")
    save_json(path, report)
    print_table(report)
    print(f"wrote {path}")
    return report


# ---- the steps -----------------------------------------------------------------------------------------

@dataclass
class Models:
    mae: torch.nn.Module
    mae_state: dict
    clf: torch.nn.Module = None
    clf_state: dict = None
    inpainter: torch.nn.Module = None
    inpainter_state: dict = None
    upscaler: torch.nn.Module = None
    upscaler_state: dict = None
    trained_on: list = field(default_factory=list)  # (path, state): the figures must come from other subjects


def load_models(cfg):
    """The best MAE, and the classifier and inpainting model where their phases have run."""
    mae_path = cfg.artifact("mae")
    mae, mae_state = build_from_checkpoint(mae_path, "mae")
    m = Models(mae.eval(), mae_state, trained_on=[(mae_path, mae_state)])
    for attr, name, kind in (("clf", "classifier", "classifier"), ("inpainter", "inpaint", "inpaint"),
                             ("upscaler", "superres", "superres")):
        path = cfg.artifact(name)
        if os.path.isfile(path):
            model, state = build_from_checkpoint(path, kind)
            setattr(m, attr, model.eval())
            setattr(m, attr + "_state", state)
            m.trained_on.append((path, state))
    if m.clf is None:
        print(f"no {cfg.artifact('classifier')}: exporting the restoration model only (run classify.py for the "
              "classifier)")
    return m


def validation_sets(cfg, m, max_images):
    """The validation slices at the MAE's size, and at the classifier's (it may read another: CLS_IMG_SIZE)."""
    def validation(size):
        _, v = load_split(dataclasses.replace(cfg, IMG_SIZE=size), quiet=True, trained_on=m.trained_on)
        return v.subset(range(min(max_images, len(v))))
    val = validation(m.mae.cfg.img_size)
    same = m.clf is None or m.clf.cfg.img_size == m.mae.cfg.img_size
    return val, val if same else validation(m.clf.cfg.img_size)


@torch.no_grad()
def parity_on(m, paths, images, noise, clf_images, seed, threads):
    """PyTorch against ONNX Runtime fp32 on real validation images; fails past runtime.PARITY."""
    parity = {}
    if m.clf is not None:
        x = torch.from_numpy(clf_images)
        ref = classifier_outputs(m.clf, x, *m.clf.foreground(x))
        prob, maps = OnnxClassifier(paths["classifier"]["ort-fp32"], threads)(clf_images)
        parity["classifier"] = {"probability": compare(ref[0], prob), "evidence": compare(ref[1], maps["evidence"]),
                                "last_block": compare(ref[2], maps["last_block"])}
    ref = graphs()[1](m.mae)(torch.from_numpy(images), torch.from_numpy(noise))
    fine, coarse, mask = OnnxMAE(paths["mae"]["ort-fp32"], threads).run(images, noise)
    parity["mae"] = {"fine": compare(ref[0], fine), "coarse": compare(ref[1], coarse),
                     "mask_equal": bool(np.array_equal(ref[2].numpy(), mask))}
    if m.inpainter is not None:
        prefilled, weight, _ = damaged_set(images[:16], 1, seed)
        ref = m.inpainter(torch.from_numpy(prefilled), torch.from_numpy(weight))
        got = OnnxInpainter(paths["inpaint"]["ort-fp32"], threads)(prefilled, weight)
        parity["inpaint"] = {"restored": compare(ref, got)}
    if m.upscaler is not None:
        ref = m.upscaler(torch.from_numpy(images[:8]))
        parity["superres"] = {"restored": compare(ref, OnnxUpscaler(paths["superres"]["ort-fp32"], threads)(images[:8]))}
    for group in parity.values():
        check_parity(group)
    print("parity PyTorch vs ONNX Runtime fp32 on", len(images), "validation images: " + "; ".join(
        f"{name}/{k} max-abs {v['max_abs']:.1e} cos {v['cosine']:.6f}" for name, g in parity.items()
        for k, v in g.items() if isinstance(v, dict)) + f" (limits {PARITY})")
    return parity


def int8_costs(m, paths, images, noise, clf_images, clf_labels, threads):
    """What each int8 variant costs on the validation split; a variant past its limit is deleted."""
    accuracy = {}
    if m.clf is not None:
        acc = classifier_accuracy(paths["classifier"], clf_images, clf_labels, threads)
        drop = acc["ort-fp32"]["auroc"] - acc["ort-int8"]["auroc"]
        change = np.abs(acc["ort-fp32"]["probs"] - acc["ort-int8"]["probs"])
        keep = not (drop > INT8_MAX_AUROC_DROP or change.mean() > INT8_MAX_MEAN_PROB_CHANGE)
        accuracy["classifier"] = {"auroc_fp32": acc["ort-fp32"]["auroc"], "auroc_int8": acc["ort-int8"]["auroc"],
                                  "auroc_drop": drop, "mean_abs_prob_diff": float(change.mean()),
                                  "max_abs_prob_diff": float(change.max()), "int8_kept": keep,
                                  "limit": INT8_MAX_AUROC_DROP, "limit_mean_prob_diff": INT8_MAX_MEAN_PROB_CHANGE}
    accuracy["mae"] = psnr_cost(mae_psnr(paths["mae"], images, noise, m.mae.cfg.patch_size, threads), "masked_psnr")
    if m.upscaler is not None:
        accuracy["superres"] = psnr_cost(superres_psnr(paths["superres"], images, threads), "psnr")
    for kind, a in accuracy.items():
        if not a["int8_kept"]:
            os.remove(paths[kind].pop("ort-int8"))
        print(f"int8 {kind}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in a.items()))
    return accuracy


def latency_targets(args, m, paths, accuracy, images, clf_images, tmp):
    """What is timed: the checkpoint's models and, beside them, the spec-size models (untrained weights) and
    the peer, each (kind, size, torch model, onnx paths, images, foreground threshold)."""
    targets = [(kind, "checkpoint", model, paths.get(kind), x, None)
               for kind, model, x in (("classifier", m.clf, clf_images), ("mae", m.mae, images)) if model is not None]
    spec = ModelConfig()
    spec_images = torch.nn.functional.interpolate(torch.from_numpy(images), size=spec.img_size, mode="bilinear")
    if not args.skip_spec:
        s_clf, s_mae = spec_models()
        s_paths = export_all(tmp, "spec_", s_clf, None if args.short else s_mae, spec_images[:2],
                             torch.rand(2, spec.num_patches))
        for kind in ("classifier", "mae"):  # the same rule as the checkpoint's: only kept variants
            if kind in accuracy and not accuracy[kind]["int8_kept"]:
                s_paths[kind].pop("ort-int8")
        targets.append(("classifier", "spec", s_clf, s_paths["classifier"], spec_images.numpy(), None))
        if not args.short:
            # the same spec-size classifier made to encode every patch: what the foreground selection saves
            s_all = TumorClassifier(dataclasses.replace(spec, foreground_threshold=-1.0)).eval()
            s_all.load_state_dict(s_clf.state_dict())
            targets += [("mae", "spec", s_mae, s_paths["mae"], spec_images.numpy(), None),
                        ("classifier", "spec-all-patches", s_all, s_paths["classifier"], spec_images.numpy(), -1.0)]
    if not args.skip_peer:
        peer = peer_model(spec)
        targets.append(("peer", "spec", peer, export_peer(tmp, peer, spec_images[:2]), spec_images.numpy(), None))
    return targets


def time_targets(args, targets):
    """Every target in PyTorch and ONNX Runtime at batch 1 and 16. -> (rows, the fp32 matrix-multiply rate each
    row's share is of, whether torch-bf16 was timed)."""
    spec = ModelConfig()
    # the full table times torch-bf16 wherever the CPU has it natively; the short one only where it is faster
    bf16 = native_amp(torch.device("cpu")) and (not args.short or resolve_amp(torch.device("cpu"), True, print, spec.embed_dim))
    peak = matmul_gflops(args.threads)
    print(f"fp32 matrix multiply on this machine, {args.threads} threads: {peak:.0f} GFLOP/s (each row's share is of this)")
    results = []
    for kind, size_name, model, onnx_paths, imgs, threshold in targets:
        mcfg = spec if kind == "peer" else model.cfg
        grid = mcfg.img_size // mcfg.patch_size
        # counted once, on the first images both batch sizes time: counting runs the model eagerly, which on
        # every batch-16 input would take longer than timing it
        gflop = gflop_per_image(kind, model, benchmark_batches(imgs, 1, grid, FLOP_COUNT_IMAGES))
        for batch, iters in ((1, args.iters), (16, max(3, args.iters // 5))):
            inputs = benchmark_batches(imgs, batch, grid, max(iters, args.warmup))
            # --short: the spec-size rows and the peer's only as deployed (ONNX Runtime); the full table also
            # times them in PyTorch, the slowest rows of the demo's benchmark
            runners = model_runners(kind, model, onnx_paths, inputs, args.threads, threshold, bf16,
                                    with_torch=not (args.short and size_name != "checkpoint"))
            patches = grid * grid
            if kind == "classifier":
                t = mcfg.foreground_threshold if threshold is None else threshold
                patches = float(np.mean([foreground_patches(x, mcfg.patch_size, t)[1].sum(1).mean() for x, _ in inputs]))
            for backend, r in bench_group(runners, batch, iters, args.warmup).items():
                results.append({"model": kind, "size": size_name, "backend": backend, "batch": batch,
                                "patches_per_image": patches, "gflop_per_image": gflop,
                                "share_of_matmul_peak": gflop * r["images_per_s"] / peak, **r})
    return results, peak, bf16


def print_table(report):
    print(f"\nlatency, {report['threads']} threads (ms; images/s from the median)")
    print(f"{'model':10s} {'size':16s} {'patches':>7s} {'backend':11s} {'batch':>5s} {'p50':>8s} {'p90':>8s} "
          f"{'p99':>8s} {'img/s':>8s} {'GFLOP':>6s} {'peak':>5s}")
    for r in report["results"]:
        print(f"{r['model']:10s} {r['size']:16s} {r['patches_per_image']:7.1f} {r['backend']:11s} {r['batch']:5d} "
              f"{r['p50_ms']:8.2f} {r['p90_ms']:8.2f} {r['p99_ms']:8.2f} {r['images_per_s']:8.1f} "
              f"{r['gflop_per_image']:6.2f} {r['share_of_matmul_peak']:5.0%}")
    if "skipped" in report:
        print(f"torch-bf16 not timed: {report['skipped']['torch-bf16']}")


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: the files already exported are complete; run the same command again")

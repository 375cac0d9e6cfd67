"""The peer a deployment is compared with: timm's ViT-S/16, exported plainly (its own file: the export is heavy,
and the test needs no trained model)."""
import numpy as np

import export_deploy
import onnx_export
import runtime


def test_the_peer_is_exported_plainly_and_timed_beside_ours(tmp_path):
    """timm's ViT-S/16 at the spec's size, as export_deploy.py's latency targets add it: exported with the
    exporter's defaults and its int8, every one of its 197 tokens counted (~9.2 GFLOP an image)."""
    import argparse
    images = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    args = argparse.Namespace(skip_spec=True, skip_peer=False, short=True)
    targets = export_deploy.latency_targets(args, export_deploy.Models(None, {}), {}, {}, images, images, str(tmp_path))
    [(kind, size, peer, paths, spec_images, _)] = targets
    assert kind == "peer" and size == "spec" and set(paths) == {"ort-fp32", "ort-int8"}
    inputs = runtime.benchmark_batches(spec_images, 1, 14, 2)
    assert 8.5 < onnx_export.gflop_per_image("peer", peer, inputs[:1]) < 10
    runners = onnx_export.model_runners("peer", peer, paths, inputs, 2, with_torch=False)
    timed = runtime.bench_group(runners, 1, 1, 0)
    assert set(timed) == {"ort-fp32", "ort-int8"} and all(r["p50_ms"] > 0 for r in timed.values())

"""Which int8 flavour is fastest for the spec-size classifier on this CPU: dynamic vs static (calibrated).

    python bench/quantization_variants.py [--threads 2] [--iters 25] [--calibration 16]

Exports the spec-size tumor classifier (untrained weights: timing only) as export_deploy.py does, then
quantizes it four ways: ONNX Runtime dynamic int8 (what export_deploy.py ships: 7-bit weights), the same with
full 8-bit weights (which saturate on CPUs without VNNI: export_deploy.quantize_int8), and static int8 in
QOperator and QDQ formats calibrated on training slices of the configured data (the demo set by default).
Times all of them and fp32 at batch 1, in alternating turns (runtime.bench_group), and prints the probability difference to fp32.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import onnx_export as ox  # noqa: E402
import runtime  # noqa: E402
from common import spec_bench_setup  # noqa: E402
from imaging import foreground_patches  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--calibration", type=int, default=16, help="training slices used to calibrate")
    args = p.parse_args(argv)
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    clf, train, val = spec_bench_setup(args.threads)
    spec = clf.cfg
    calib = train.images[:args.calibration].numpy()
    x = val.images[:1].numpy()
    with tempfile.TemporaryDirectory() as d:
        raw, fp32 = os.path.join(d, "raw.onnx"), os.path.join(d, "fp32.onnx")
        example = torch.from_numpy(calib[:2])
        ox.export_onnx(ox.graphs()[0](clf), (example, *clf.foreground(example)), ["images", "keep", "valid"],
                       ox.GRAPHS["classifier"][2], fp32, clf.cfg.to_dict(), "classifier", raw_path=raw,
                       token_inputs=("keep", "valid"))
        paths = {"ort-fp32": fp32, "ort-int8 (dynamic)": ox.quantize_int8(raw, os.path.join(d, "dyn.onnx"))}
        prepared = os.path.join(d, "prep.onnx")
        quant_pre_process(raw, prepared, skip_symbolic_shape=True)
        paths["ort-int8 (dynamic, 8-bit w)"] = os.path.join(d, "dyn8.onnx")
        quantize_dynamic(prepared, paths["ort-int8 (dynamic, 8-bit w)"], weight_type=QuantType.QInt8, per_channel=True)

        class Reader(CalibrationDataReader):
            def __init__(self):
                feeds = []
                for i in range(len(calib)):
                    keep, valid = foreground_patches(calib[i:i + 1], spec.patch_size, spec.foreground_threshold)
                    feeds.append({"images": calib[i:i + 1], "keep": keep, "valid": valid})
                self.items = iter(feeds)

            def get_next(self):
                return next(self.items, None)

        for fmt, name in ((QuantFormat.QOperator, "ort-int8-static-qop"), (QuantFormat.QDQ, "ort-int8-static-qdq")):
            out = os.path.join(d, name + ".onnx")
            quantize_static(prepared, out, Reader(), quant_format=fmt, per_channel=True, reduce_range=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            op_types_to_quantize=["MatMul", "Gemm", "Conv"])
            paths[name] = out
        runners = {k: runtime.OnnxClassifier(v, args.threads) for k, v in paths.items()}
        ref = runners["ort-fp32"](x)[0]
        times = {k: [] for k in runners}
        for r in range(args.iters + 5):
            for k, m in runners.items():
                t0 = time.perf_counter()
                m(x)
                if r >= 5:
                    times[k].append(time.perf_counter() - t0)
        print(f"spec-size classifier, batch 1, {args.threads} threads, {args.iters} timed calls each (in alternating turns):")
        for k, m in runners.items():
            diff = float(np.abs(m(x)[0] - ref).max())
            print(f"  {k:28s} p50 {statistics.median(times[k]) * 1e3:6.2f} ms   |p - p_fp32| {diff:.4f}")


if __name__ == "__main__":
    main()

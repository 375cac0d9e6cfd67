"""The super-resolution model's speed: a 256-pixel slice enlarged to 512 whole, by ONNX Runtime and PyTorch.

    python bench/superres_latency.py --checkpoint outputs/best_miram_superres.pth [--threads 2] [--side 256] [--json FILE]

Exports the checkpoint as export_deploy.py does (fp32 and dynamic int8) into a temporary folder and times the
whole enlargement (bicubic interpolation, the overlapping tiles through the model, the blend) for each backend
in alternating turns (superres.time_enlargement). Whether int8 keeps its quality is export_deploy.py's check,
on validation slices; here both are timed. The slice is the geometric phantom: the time does not depend on
what the slice shows.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import build_from_checkpoint  # noqa: E402
from onnx_export import export_all  # noqa: E402
from records import run_info, save_json  # noqa: E402
from superres import TIMED_SIDE, phantoms, time_enlargement  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a train.py --superres checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--side", type=int, default=TIMED_SIDE, help="the slice's side in pixels")
    p.add_argument("--iters", type=int, default=40, help="a quarter of them are timed calls per backend")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = build_from_checkpoint(args.checkpoint, "superres")
    model.eval()
    image = phantoms(args.side)["phantom"]
    size = model.cfg.img_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_all(tmp, "", None, None, torch.rand(2, 1, size, size), None, upscaler=model)["superres"]
        timed = time_enlargement(model, paths, image, args.threads, args.iters, warmup=2, side=args.side)
    result = {"checkpoint": args.checkpoint, "threads": args.threads, "miram_features": model.cfg.superres_features,
              **timed, "run": run_info()}
    if args.json:
        save_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k != "run"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

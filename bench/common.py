"""What several benchmarks start from."""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import load_config  # noqa: E402
from dataset import load_split  # noqa: E402
from onnx_export import spec_models  # noqa: E402


def spec_bench_setup(threads):
    """torch at `threads` threads, the untrained spec-size classifier, and the demo (or configured) training and
    validation slices at its image size."""
    import torch
    torch.set_num_threads(threads)
    clf, _ = spec_models()
    cfg = dataclasses.replace(load_config(), IMG_SIZE=clf.cfg.img_size)
    train, val = load_split(cfg, quiet=True)
    return clf, train, val

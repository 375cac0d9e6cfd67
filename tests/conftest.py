import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_tiny_dataset(root, n_subjects=4, per_subject=3, shape=(72, 80), seed=0, prefix="subj"):
    """HR/MASK layout with ellipse "heads", a bright blob as tumor in every other slice."""
    import tifffile
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "HR"), exist_ok=True)
    os.makedirs(os.path.join(root, "MASK"), exist_ok=True)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    k = 0
    for s in range(n_subjects):
        for i in range(per_subject):
            cy, cx = shape[0] / 2 + rng.normal(0, 2), shape[1] / 2 + rng.normal(0, 2)
            head = (((yy - cy) / (shape[0] * 0.4)) ** 2 + ((xx - cx) / (shape[1] * 0.35)) ** 2) < 1
            img = head * (120 + 40 * np.sin(xx / 5.0) * np.cos(yy / 7.0)) + rng.normal(0, 3, shape)
            mask = np.zeros(shape, np.uint8)
            if k % 2 == 0:
                blob = (yy - cy - 5) ** 2 + (xx - cx + 4) ** 2 < 36
                img[blob] = 230
                mask[blob] = 255
            name = f"{prefix}{s}_{i:03d}.tif"
            tifffile.imwrite(os.path.join(root, "HR", name), np.clip(img, 0, 255).astype(np.uint8))
            tifffile.imwrite(os.path.join(root, "MASK", name), mask)
            k += 1
    return root


@pytest.fixture
def tiny_data(tmp_path):
    return write_tiny_dataset(str(tmp_path / "data"))


@pytest.fixture(autouse=True)
def clean_miram_env(monkeypatch):
    """Tests see only the MIRAM_* settings they set themselves."""
    for key in list(os.environ):
        if key.startswith("MIRAM_"):
            monkeypatch.delenv(key)


# Prepended to a `python -c` program: from then on `import torch` fails as it does where torch is not installed.
NO_TORCH = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ModuleNotFoundError(\"No module named 'torch'\", name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n")


def tiny_mae():
    """The smallest MIRAM: for checkpoint tests that need real weights, not training."""
    from config import ModelConfig
    from models import MIRAM
    return MIRAM(ModelConfig(img_size=32, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                             decoder_depth=1, decoder_num_heads=2))


def tiny_args(data, out, *extra):
    return ["--preset", "tiny", "--dataset-path", data, "--output-path", out, *extra]


def enhance_args(out, *extra):
    """enhance.py reads no data set: the tiny preset and the output folder its models are in."""
    return ["--preset", "tiny", "--output-path", out, *extra]


def pretrain_tiny(base):
    """Tiny data in base/data and a pre-trained MAE in base/o -> (data, out)."""
    import train
    data = write_tiny_dataset(os.path.join(base, "data"))
    out = os.path.join(base, "o")
    train.main(tiny_args(data, out))
    return data, out


def train_tiny_pipeline(base):
    """Tiny data, a pre-trained MAE and a fine-tuned classifier in base/o: what later phases start from."""
    import classify
    data, out = pretrain_tiny(base)
    classify.main(tiny_args(data, out, "--n-viz", "0"))
    return data, out



def write_class_folders(root, classes=("no", "yes"), per_class=6, shape=(72, 80), seed=0):
    """<root>/<class>/ JPEG and PNG "heads", each of its own texture (no two near-identical); the last class's
    carry a bright blob."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            cy, cx = shape[0] / 2 + rng.normal(0, 3), shape[1] / 2 + rng.normal(0, 3)
            head = (((yy - cy) / (shape[0] * 0.4)) ** 2 + ((xx - cx) / (shape[1] * 0.35)) ** 2) < 1
            img = head * (120 + 50 * np.sin(xx / rng.uniform(2, 6) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(2, 6)))
            if c == len(classes) - 1:
                img[(yy - cy - 5) ** 2 + (xx - cx + 4) ** 2 < 36] = 240
            ext = ".jpg" if i % 2 else ".png"
            Image.fromarray(np.clip(img + rng.normal(0, 3, shape), 0, 255).astype(np.uint8)).convert("RGB").save(
                os.path.join(root, name, f"{name}{i}{ext}"))
    return root

import json
import math
import os

import numpy as np
import pytest
import torch

import evaluate
import restoration
import train
from conftest import tiny_args
from models import mask_noise, pixel_mask
from records import run_cli


def test_masked_region_is_exactly_the_masked_patches():
    mask = torch.zeros(1, 16)
    mask[0, [0, 5, 15]] = 1
    hole = pixel_mask(mask, 16, 64)[0, 0]
    assert hole.sum() == 3 * 256
    assert hole[:16, :16].all() and hole[16:32, 16:32].all() and hole[48:, 48:].all()
    assert not hole[:16, 16:].any()


def test_same_seed_same_masks():
    assert torch.equal(mask_noise(4, 196, 7), mask_noise(4, 196, 7))
    assert not torch.equal(mask_noise(4, 196, 7), mask_noise(4, 196, 8))


def test_perfect_prediction_scores_are_clean():
    x = torch.rand(2, 1, 32, 32)
    hole = torch.zeros_like(x)
    hole[..., :16, :] = 1
    s = evaluate.scores(x.clone(), x, hole)
    assert all(math.isinf(v) for v in s["masked"]["psnr"].tolist())
    assert torch.allclose(s["composite"]["ssim"], torch.ones(2))
    summary = evaluate.summarize(evaluate.flatten({"m": {"fine": [s]}}))
    assert summary["m"]["fine"]["masked"]["psnr"] == float("inf")


@pytest.mark.parametrize("method", evaluate.BASELINES)
def test_classical_fills_keep_known_pixels_and_fill_the_hole(method):
    yy, xx = np.mgrid[:32, :32].astype(np.float64)
    img = (xx + yy) / 62.0  # a ramp: linear and biharmonic fills are (near) exact inside
    hole = np.zeros_like(img, bool)
    hole[8:20, 10:22] = True
    out = restoration.classical_fill(img, hole, method)
    assert np.array_equal(out[~hole], img[~hole])
    err = np.abs(out - img)[hole].max()
    assert err < (0.2 if method == "nearest" else 1e-6 if method == "linear" else 1e-3)


def test_seamless_fill_keeps_the_fills_structure_and_meets_the_known_pixels():
    rng = np.random.default_rng(0)
    hole = np.kron(rng.random((4, 4)) < 0.6, np.ones((8, 8))).astype(bool)  # hidden patches of a 4x4 grid
    hole[:8, :8], hole[8:16, 8:16] = True, False
    # tissue of a level the fill does not know, with structure inside a hidden patch that the fill does know
    img = np.full((32, 32), 0.4)
    img[2:6, 2:6] = 0.9
    fill = img + 0.3 + rng.random(img.shape) * ~hole  # wrong level, anything outside the hole (never read)
    out = restoration.seamless_fill(fill, img, hole)
    assert np.array_equal(out[~hole], img[~hole]) and np.allclose(out[hole], img[hole], atol=1e-9)
    # only the fill's differences inside the hole count; every known pixel is kept
    noisy = rng.random(img.shape)
    out = restoration.seamless_fill(noisy, img + noisy, hole)
    assert np.allclose(out, restoration.seamless_fill(noisy + 2.0 + 5 * ~hole, img + noisy, hole), atol=1e-9)
    assert np.array_equal(out[~hole], (img + noisy)[~hole])
    # a flat fill carries no structure: the result is the harmonic fill, within the known pixels' range
    flat = restoration.seamless_fill(np.full(img.shape, 5.0), noisy, hole)
    assert noisy[~hole].min() <= flat[hole].min() and flat[hole].max() <= noisy[~hole].max()
    assert np.array_equal(restoration.seamless_fill(fill, img, np.zeros_like(hole)), img)
    # several fills of one hole, solved together, are each the fill solved alone
    both = restoration.seamless_fill(np.stack([noisy, np.full(img.shape, 5.0)]), noisy, hole)
    assert np.allclose(both[1], flat, atol=1e-12)


@pytest.mark.slow
def test_evaluate_end_to_end(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    res = evaluate.main(tiny_args(tiny_data, out, "--data", tiny_data, "--n-samples", "2", "--sweep"))
    assert os.path.getsize(os.path.join(out, "miram_eval_sample.png")) > 0
    assert os.path.getsize(os.path.join(out, "eval_sweep.png")) > 0
    saved = json.load(open(os.path.join(out, "eval_metrics.json")))
    assert saved["n_images"] == 12 and saved["mask_ratio"] == 0.75 and saved["seed"] == 1234
    for scale in ("fine", "coarse"):
        for region in ("masked", "composite"):
            assert set(saved["miram"][scale][region]) == {"psnr", "ssim"}
    assert set(saved["baselines"]) == {"nearest", "linear", "biharmonic"}
    assert saved["baselines"]["biharmonic"]["masked"] == saved["baselines"]["biharmonic"]["fine"]["masked"]
    assert len(saved["per_image"]["miram"]["fine"]["masked"]["psnr"]) == 12
    assert set(saved["sweep"]) == {"0.25", "0.5", "0.75", "0.9"}
    # composite PSNR counts visible pixels as exact, so it can only be higher than masked PSNR
    assert saved["miram"]["fine"]["composite"]["psnr"] > saved["miram"]["fine"]["masked"]["psnr"]
    again = evaluate.main(tiny_args(tiny_data, out, "--data", tiny_data, "--baselines", "nearest", "--n-samples", "0"))
    assert again["miram"] == res["miram"]  # same seed, same masks, same numbers
    assert "MIRAM vs best baseline" in capsys.readouterr().out


def test_missing_checkpoint_message(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, tiny_args(tiny_data, str(tmp_path / "empty")))
    assert "Model not found" in capsys.readouterr().err

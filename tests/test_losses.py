import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from losses import finite_mean, psnr, ssim


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    a = (0.5 + 0.4 * np.sin(xx / 6) * np.cos(yy / 9)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    return a, b


def test_ssim_matches_scikit_image():
    a, b = _pair()
    ref = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    ours = ssim(torch.tensor(b)[None, None], torch.tensor(a)[None, None]).item()
    assert ours == pytest.approx(ref, abs=1e-5)


def test_psnr_matches_scikit_image_and_perfect_is_inf():
    a, b = _pair(1)
    ref = peak_signal_noise_ratio(a, b, data_range=1.0)
    assert psnr(torch.tensor(b)[None, None], torch.tensor(a)[None, None]).item() == pytest.approx(ref, rel=1e-5)
    t = torch.tensor(a)[None, None]
    assert math.isinf(psnr(t, t).item())
    assert ssim(t, t).item() == pytest.approx(1.0)
    assert finite_mean([20.0, float("inf")]) == float("inf") and finite_mean([10.0, 20.0]) == 15.0


def test_weighted_psnr_only_counts_weighted_pixels():
    t = torch.zeros(1, 1, 8, 8)
    p = t.clone()
    p[..., :4] = 0.1  # error only in the left half
    w = torch.zeros_like(t)
    w[..., 4:] = 1
    assert math.isinf(psnr(p, t, weight=w).item())
    assert psnr(p, t, weight=1 - w).item() == pytest.approx(20.0, rel=1e-5)

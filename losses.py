"""The dual-scale reconstruction loss and the image metrics every phase uses (PSNR, SSIM)."""
import math

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only.

    pred, target (B, L, P); mask (B, L) with 1 = masked. Visible patches contribute nothing.
    """
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def dual_scale_loss(loss_fine, loss_coarse, lambda_fine, lambda_coarse):
    return lambda_fine * loss_fine + lambda_coarse * loss_coarse


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, weight: torch.Tensor = None):
    """Peak signal-to-noise ratio in dB, per image (B,). `weight` (same shape, 0/1) restricts the pixels.

    A perfect prediction gives +inf.
    """
    err = (pred.float() - target.float()) ** 2
    dims = tuple(range(1, err.ndim))
    if weight is None:
        mse = err.mean(dim=dims)
    else:
        weight = weight.float().expand_as(err)
        mse = (err * weight).sum(dim=dims) / weight.sum(dim=dims).clamp_min(1)
    return psnr_from_mse(mse, data_range)


def psnr_from_mse(mse, data_range: float = 1.0):
    """PSNR in dB of a mean squared error (a tensor, or a float for errors pooled over images); 0 -> inf."""
    if not isinstance(mse, torch.Tensor):
        return float(10 * math.log10(data_range ** 2 / mse)) if mse > 0 else float("inf")
    return 10 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(size: int, sigma: float, device, dtype):
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g


def _band(n, g):
    """(n - k + 1, n) matrix whose row i holds the window g at columns i..i+k-1."""
    k = len(g)
    idx = torch.arange(n - k + 1, device=g.device)[:, None] + torch.arange(k, device=g.device)[None, :]
    return torch.zeros(n - k + 1, n, device=g.device, dtype=g.dtype).scatter_(1, idx, g.expand(n - k + 1, k))


def ssim_map(pred, target, data_range=1.0, sigma=1.5, k1=0.01, k2=0.03, dtype=torch.float64):
    """The SSIM index map of Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5).

    pred, target (B, C, H, W) -> (B, C, H-10, W-10): only windows wholly inside the image, as scikit-image
    does (`structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`).
    """
    x, y = pred.to(dtype), target.to(dtype)  # float64 for metrics; float32 is enough for a loss
    radius = int(3.5 * sigma + 0.5)  # scikit-image's truncate=3.5 -> 11 taps for sigma 1.5
    g = _gaussian_window(2 * radius + 1, sigma, x.device, x.dtype)
    # The separable blur as two banded matrix products (rows, then columns; valid windows only): on CPU
    # ~10x faster than the depthwise convolution, forward and backward (a training loss uses it).
    rows, cols = _band(x.shape[-2], g), _band(x.shape[-1], g)

    def blur(t):
        return rows @ t @ cols.T

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim(pred, target, data_range=1.0, weight=None, dtype=torch.float64):
    """Mean SSIM per image (B,). `weight` (B, 1, H, W) restricts the average to windows centred on it."""
    m = ssim_map(pred, target, data_range, dtype=dtype)
    if weight is None:
        return m.mean(dim=(1, 2, 3)).float()
    crop = (weight.shape[-1] - m.shape[-1]) // 2
    w = weight[..., crop:weight.shape[-2] - crop, crop:weight.shape[-1] - crop].to(m.dtype).expand_as(m)
    return ((m * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3)).clamp_min(1)).float()


def finite_mean(values):
    """Mean of a list of floats; inf (perfect PSNR) is kept as inf rather than poisoning with nan."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan")
    if any(math.isinf(v) and v > 0 for v in vals):
        return float("inf")
    return sum(vals) / len(vals)

"""How scanners lose resolution, reproduced (numpy only): the low-resolution inputs of super-resolution.

A slice (H, W) becomes (H/f, W/f) as a coarser acquisition would give it:
- kspace: only the central H/f x W/f spatial frequencies are acquired (an MR image's resolution is the
  extent of its k-space), so detail is cut off with the ringing such truncation brings;
- area: each pixel the mean of the f x f pixels it covers (a larger voxel's partial volume);
then, with noise > 0, Rician noise as a magnitude image carries it (Gaussian noise on the real and imaginary
channels), its sigma a share of the slice's intensity range. The result stays in the slice's range, and the
same seed gives the same result on any machine.
"""
import numpy as np


def kspace_truncate(img, factor):
    """The central 1/factor of k-space each way, back to an image of (H // factor, W // factor). A coarse
    pixel sits at the centre of the fine pixels it covers (as area averaging's and the written scans' do): the
    spectrum is shifted by that half step before the coarse grid samples it."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    H, W = h * factor, w * factor
    full = np.fft.fftshift(np.fft.fft2(img[:H, :W]))
    centre = (factor - 1) / 2
    fy, fx = (np.fft.fftshift(np.fft.fftfreq(n)) for n in (H, W))
    full = full * np.exp(2j * np.pi * centre * (fy[:, None] + fx[None, :]))
    top, left = H // 2 - h // 2, W // 2 - w // 2
    low = full[top:top + h, left:left + w]
    return np.fft.ifft2(np.fft.ifftshift(low)).real / factor ** 2  # the same mean intensity


def area_average(img, factor):
    """Each (factor x factor) block's mean -> (H // factor, W // factor)."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    return img[:h * factor, :w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


DEGRADATIONS = {"kspace": kspace_truncate, "area": area_average}


def degrade(img, kind, factor=2, noise=0.0, seed=0):
    """A slice (H, W) -> its low-resolution version (H // factor, W // factor), float64, within the slice's
    own range. kind: one of DEGRADATIONS; noise: Rician sigma over the slice's intensity range."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r} (known: {', '.join(DEGRADATIONS)})")
    img = np.asarray(img, np.float64)
    low = DEGRADATIONS[kind](img, factor)
    lo, hi = float(img.min()), float(img.max())
    if noise > 0:
        rng = np.random.default_rng(seed)
        sigma = noise * (hi - lo)
        low = np.hypot(low - lo + rng.normal(0, sigma, low.shape), rng.normal(0, sigma, low.shape)) + lo
    return np.clip(low, lo, hi)


def upsample(low, factor=2):
    """(h, w) -> (h * factor, w * factor) by bicubic interpolation: what a viewer shows, and the input that
    super-resolution corrects."""
    from skimage.transform import resize
    return resize(low, (low.shape[0] * factor, low.shape[1] * factor), order=3, mode="reflect", anti_aliasing=False)


def lanczos(low, factor=2):
    """(h, w) -> (h * factor, w * factor) by Lanczos interpolation (3 lobes, Pillow's): the sharper classical
    enlargement, a second baseline beside bicubic."""
    from PIL import Image
    img = Image.fromarray(np.asarray(low, np.float32))
    return np.asarray(img.resize((low.shape[1] * factor, low.shape[0] * factor), Image.Resampling.LANCZOS), np.float64)


INTERPOLATIONS = {"bicubic": upsample, "lanczos": lanczos}


def training_pairs(slices, crops, size, seed, factor=2, max_noise=0.0):
    """Super-resolution's examples from slices (each (H, W) in [0, 1] at its own pixel scale): `crops` crops
    of size x size a slice (a smaller slice padded with zeros), each degraded once by a drawn kind and noise
    level. -> float32 (N, 1, size, size) arrays: the degraded crop enlarged again (upsample), and the crop."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for img in slices:
        pad = [(0, max(0, size - n)) for n in img.shape]
        img = np.pad(np.asarray(img, np.float64), pad)
        for _ in range(crops):
            y, x = (rng.integers(0, n - size + 1) for n in img.shape)
            crop = img[y:y + size, x:x + size]
            kind = sorted(DEGRADATIONS)[rng.integers(len(DEGRADATIONS))]
            low = degrade(crop, kind, factor, rng.uniform(0, max_noise), int(rng.integers(2 ** 31)))
            inputs.append(upsample(low, factor))
            targets.append(crop)
    return tuple(np.stack(a)[:, None].astype(np.float32) for a in (inputs, targets))

"""Training-time data: random augmentation of each batch, and anatomy variants drawn once per run.

augment_params/apply_augment move, scale, flip and re-gamma a batch on the device the model runs on;
anatomy_variants turns each training slice into other plausible brains (MONAI transforms) before training.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from config import MiramError

if TYPE_CHECKING:  # annotations only
    import torch


def augment_params(n: int, generator: torch.Generator, wider: float = 0.0):
    """Random parameters for n images: rotation +-10 deg, scale 0.9-1.1, shift +-5%, left-right flip,
    gamma 0.7-1.4; with wider > 0, that share of the images framed wider (scale 0.45-1.1, shift +-10%: a head
    smaller in the frame and off its centre, as other scanners and fields of view give it: docs/METHODS.md
    says why 0.45). Drawn for a whole
    global batch, so every process of a distributed run (and a single process with the same global batch)
    gives each image the same augmentation."""
    import torch

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator)
    params = {"angle": uniform(-10, 10) * torch.pi / 180, "scale": uniform(0.9, 1.1),
              "flip": torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0),
              "tx": uniform(-0.05, 0.05), "ty": uniform(-0.05, 0.05),
              "gamma": torch.exp(uniform(np.log(0.7), np.log(1.4)))}
    if wider > 0:  # drawn after the rest: wider=0 keeps the draws as they were
        wide = torch.rand(n, generator=generator) < wider
        params["scale"] = torch.where(wide, uniform(0.45, 1.1), params["scale"])
        for shift in ("tx", "ty"):
            params[shift] = torch.where(wide, 2 * params[shift], params[shift])
    return params


def apply_augment(imgs: torch.Tensor, params, intensity=True) -> torch.Tensor:
    """imgs (B, C, H, W) in [0, 1] -> augmented, with params of augment_params(B, ...); intensity=False:
    the geometry alone (for masks)."""
    import torch
    import torch.nn.functional as F
    B = imgs.shape[0]
    cos, sin = torch.cos(params["angle"]) / params["scale"], torch.sin(params["angle"]) / params["scale"]
    flip = params["flip"]
    theta = torch.stack([torch.stack([cos * flip, -sin, params["tx"]], 1),
                         torch.stack([sin * flip, cos, params["ty"]], 1)], 1)
    grid = F.affine_grid(theta.to(imgs), list(imgs.shape), align_corners=False)
    out = F.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.clamp(0, 1)
    return out ** params["gamma"].to(imgs).view(B, 1, 1, 1) if intensity else out


def local_images(images, gidx, mine, gen, device, augment, masks=None, wider=0.0):
    """This process's images of global batch gidx, augmented. The augmentation is drawn for the whole
    global batch (the same on every process), then applied where the model runs: on a GPU the CPU would
    otherwise bound the step rate. With masks (N, 1, S, S): -> (images, masks as float), each mask moved
    as its image is (its values become the share of tumor under each pixel). wider: see augment_params."""
    params = augment_params(len(gidx), gen, wider) if augment else None
    imgs = images[gidx[mine]]
    if masks is not None:
        masks = masks[gidx[mine]].to(imgs.dtype)
    imgs = imgs.to(device, non_blocking=True)
    if masks is not None:
        masks = masks.to(device, non_blocking=True)
    if params is not None:
        params = {k: v[mine].to(device) for k, v in params.items()}
        imgs = apply_augment(imgs, params)
        if masks is not None:
            masks = apply_augment(masks, params, intensity=False)
    return imgs if masks is None else (imgs, masks)


def t2_like(x):
    """Inverts the brain's contrast, background kept: T1 white matter bright and fluid dark become T2's dark
    white matter and bright fluid (grey matter stays between them)."""
    import torch
    return torch.where(torch.as_tensor(x) > 0.05, 0.15 + 0.85 * (1 - torch.as_tensor(x)), torch.as_tensor(x))


# What anatomy_transform draws; part of the variant cache's key, so a changed recipe is never read back stale.
ANATOMY_RECIPE = 3


def anatomy_transform(size):
    """One draw of another plausible brain from a size x size slice (MONAI transforms, dictionaries of image and
    mask): smooth elastic deformation (the mask moves alike), T2-like contrast, bias field, gamma, lower
    resolution, blur or sharpening (a single subject's scan is sharper than the averaged template), a cropped
    field of view (the image and mask kept inside one random box, 20-80% of the side, zero outside, as a slab
    acquisition or a cropped export gives) and Rician noise."""
    from monai.transforms import (Compose, Rand2DElasticd, RandAdjustContrastd, RandBiasFieldd, RandCoarseDropoutd,
                                  RandGaussianSharpend, RandGaussianSmoothd, RandLambdad, RandRicianNoised,
                                  RandSimulateLowResolutiond)
    return Compose([
        Rand2DElasticd(keys=("image", "mask"), spacing=(32, 32), magnitude_range=(1, 2), prob=0.8,
                       mode=("bilinear", "bilinear"), padding_mode="zeros", allow_missing_keys=True),
        RandLambdad(keys="image", func=t2_like, prob=0.3),
        RandBiasFieldd(keys="image", coeff_range=(0.0, 0.3), prob=0.5),
        RandAdjustContrastd(keys="image", gamma=(0.6, 1.6), prob=0.5),
        RandSimulateLowResolutiond(keys="image", zoom_range=(0.4, 0.9), prob=0.3, downsample_mode="area",
                                   upsample_mode="bilinear"),  # "nearest" shifted the image off its mask
        RandGaussianSmoothd(keys="image", sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), prob=0.2),
        RandGaussianSharpend(keys="image", sigma1_x=(0.5, 1.0), sigma1_y=(0.5, 1.0), sigma2_x=0.5, sigma2_y=0.5,
                             alpha=(1.0, 4.0), prob=0.3),  # MONAI's default alpha (10-30) rings at edges
        # dropout_holes=False keeps the box and fills the rest: a field of view, not a hole
        RandCoarseDropoutd(keys=("image", "mask"), holes=1, spatial_size=max(1, int(size * 0.2)),
                           max_spatial_size=max(1, int(size * 0.8)), dropout_holes=False, fill_value=0.0,
                           prob=0.3, allow_missing_keys=True),
        RandRicianNoised(keys="image", std=0.03, prob=0.3, sample_std=True),
    ])


def anatomy_variants(images, copies: int, seed: int, masks=None, cache=None):
    """images (N, 1, S, S) followed by `copies` variants of each (anatomy_transform, drawn from seed): variant
    k of slice i is row k * N + i; images stay in [0, 1]. -> (images, masks): with masks (N, 1, S, S) float,
    each deformed with its image (the lesion's share under each pixel); without, None and about half the
    time (the draws, and so the images, are the same). cache: a file that keeps the result (without masks),
    read back when it was drawn from the same images, copies, seed and MONAI version: pre-training and the
    inpainting fine-tune use the same variants, which take seconds to draw."""
    import torch
    if copies == 0:
        return images, masks
    if cache is not None and masks is None:
        return _cached_variants(images, copies, seed, cache)
    transform = anatomy_transform(images.shape[-1])
    transform.set_random_state(seed=seed)
    out_images, out_masks = [images], [masks]
    for _ in range(copies):
        drawn = ([transform({"image": img}) for img in images] if masks is None
                 else [transform({"image": img, "mask": m}) for img, m in zip(images, masks)])
        out_images.append(torch.stack([torch.as_tensor(d["image"]).float().clamp(0, 1) for d in drawn]))
        if masks is not None:
            out_masks.append(torch.stack([torch.as_tensor(d["mask"]).float().clamp(0, 1) for d in drawn]))
    # MONAI returns MetaTensors: made plain
    images = torch.cat(out_images).as_subclass(torch.Tensor)
    return images, None if masks is None else torch.cat(out_masks).as_subclass(torch.Tensor)


def _cached_variants(images, copies, seed, path):
    import hashlib
    from importlib.metadata import version

    import torch

    from checkpoint import atomic_torch_save
    # MONAI's version from its metadata: importing MONAI takes seconds, which a cache hit need not pay
    key = (hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()
           + f"/{copies}/{seed}/{version('monai')}/{ANATOMY_RECIPE}")
    if os.path.isfile(path):
        try:
            saved = torch.load(path, weights_only=True)
            if saved.get("key") == key:
                return saved["images"], None
        except Exception:  # unreadable (a foreign or damaged file): drawn again and replaced
            pass
    out, _ = anatomy_variants(images, copies, seed)
    try:
        atomic_torch_save({"key": key, "images": out}, path)
    except MiramError:  # a cache only: the run goes on without it
        pass
    return out, None


def variant_index(gidx, n, copies, gen):
    """Global batch indices into anatomy_variants' images: each slice as itself or one of its variants, drawn
    for the whole global batch (the same on every process); without variants, gidx unchanged."""
    import torch
    if copies == 0:
        return gidx
    return gidx + n * torch.randint(0, copies + 1, (len(gidx),), generator=gen)


def augment(imgs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augments a batch with parameters drawn from `generator` (seeded run: reproducible)."""
    return apply_augment(imgs, augment_params(imgs.shape[0], generator))

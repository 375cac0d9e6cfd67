"""Test-time adaptation: a copy of the pre-trained MAE fine-tuned on one image's visible patches before it fills
that image's hidden ones (ADAPT_STEPS in evaluate.py), so a scan unlike the training data teaches its own contrast
and sharpness first."""
import copy

import torch

from hardware import autocast, use_fused_attention
from models import MIRAM, unpatchify

# Per-image copies adapted at once in one pass hold 4 numbers per parameter each (weights, gradients, Adam's
# two moments): at most this many bytes of them, so a spec-size model adapts a few images per pass, the demo's
# a batch.
ADAPT_PASS_BYTES = 1 << 30


def adapt_to_images(model: MIRAM, imgs: torch.Tensor, visible: torch.Tensor, steps: int, lr: float, generators,
                    amp: bool = False):
    """Copies of model's parameters, one per image, each fine-tuned on its own image's visible patches
    (test-time training, as in Gandelsman et al., 2022): a scan from another scanner or head than the training
    data teaches its own contrast and sharpness before the hidden patches are filled. imgs (B, C, H, W) on the
    model's patch grid; visible (B, L) bool, as many visible patches in each; generators: one per image.
    -> {name: (B, *shape) tensor}, or None when there is nothing to adapt (steps 0, or too few visible
    patches: the model's own weights serve).

    Each step restores a random quarter of the visible patches from the rest, on the image and on its
    left-right mirror (pre-training mirrors slices too, so both are brains the model knows; the mirror puts
    the same pixels at other positions; docs/METHODS.md has the choices measured).
    The hidden pixels are zeroed first and every view keeps them hidden and out of the loss, so the fill
    of a hidden patch stays a prediction from the visible ones alone. The copies step together as one
    batched model (torch.func.vmap): the sum of their losses gives each copy its own image's gradient, and
    Adam's update is elementwise, so each copy learns as it would alone, faster than one image at a time.
    amp: the steps under autocast (bf16 where native)."""
    from torch.func import functional_call, vmap
    B, L = visible.shape
    keep = int(visible[0].sum())
    if not bool((visible.sum(1) == keep).all()):
        raise ValueError("adapt_to_images: every image needs the same number of visible patches")
    hide = max(1, keep // 4)
    if steps == 0 or keep - hide < 1:
        return None  # with one visible patch there is nothing to learn it from
    grid, p = model.encoder.grid, model.cfg.patch_size
    known = torch.stack([visible, visible.view(B, grid, grid).flip(2).reshape(B, L)], 1)  # (B, 2, L): each, mirrored
    pixels = unpatchify(known.reshape(B * 2, L, 1).expand(-1, -1, p * p).to(imgs.dtype), p, 1)
    views = torch.stack([imgs, imgs.flip(-1)], 1) * pixels.view(B, 2, *imgs.shape[1:])
    # the ratio whose visible_count is keep - hide, away from float rounding at the boundary
    ratio = 1 - (keep - hide + 0.5) / L
    copies = {name: w.detach().unsqueeze(0).repeat(B, *[1] * w.dim()).requires_grad_()
              for name, w in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_of(weights, image_views, noise, image_known):
        with autocast(imgs.device, amp):
            return functional_call(model, {**weights, **buffers}, (image_views, noise, ratio),
                                   {"known": image_known}).loss.float()

    losses = vmap(loss_of)
    opt = torch.optim.AdamW(copies.values(), lr=lr, weight_decay=0.0, fused=True)
    was_training = model.training
    model.eval()  # no dropout to switch off: the steps are deterministic given the generators
    # timm's plain attention path: the fused CPU kernel has no batching rule, vmap would loop over the copies
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    use_fused_attention(model, False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                # hidden patches draw noise above every visible one, so they are never among the kept
                noise = torch.stack([torch.rand(2, L, generator=g) for g in generators]).to(imgs.device)
                losses(copies, views, noise + 2.0 * (~known).float(), known).sum().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
        for m, was in fused.items():
            m.fused_attn = was
    return {name: w.detach() for name, w in copies.items()}


@torch.no_grad()
def reconstruct_adapted(model: MIRAM, imgs, noise, mask_ratio, steps: int, lr: float, seeds, amp: bool = False):
    """MIRAM.reconstruct with each image filled by its own copy of the model, adapted to that image's
    visible patches first (adapt_to_images, as many images a pass as ADAPT_PASS_BYTES allows); seeds: one per
    image, so a fill does not depend on its batch."""
    _, mask, _ = model.encoder.random_masking(noise, mask_ratio)
    per_pass = max(1, ADAPT_PASS_BYTES // (16 * sum(w.numel() for w in model.parameters())))
    adapted, fills = None, []  # one copy of the model, made when first needed, takes each image's weights
    for start in range(0, len(imgs), per_pass):
        part = slice(start, start + per_pass)
        weights = adapt_to_images(model, imgs[part], mask[part] == 0, steps, lr,
                                  [torch.Generator().manual_seed(s) for s in seeds[part]], amp)
        for i in range(len(imgs[part])):
            net = model
            if weights is not None:
                adapted = copy.deepcopy(model).eval() if adapted is None else adapted
                adapted.load_state_dict({name: w[i] for name, w in weights.items()}, strict=False)
                net = adapted
            one = slice(start + i, start + i + 1)
            fills.append(net.reconstruct(imgs[one], noise[one], mask_ratio))
    return tuple(torch.cat(parts) for parts in zip(*fills))

"""The classifier's heatmaps, (B, grid, grid) each: its own evidence (the default: each patch's weight in the
pooled logit, on the patch grid or, with the convolutional branch, on the cell whose score the patch took),
and three on the patch grid read from attention (the last block's CLS attention, the rollout, the
gradient-weighted relevance). tumor.py scores them; the ONNX graph computes the first two.
"""
import torch

from models import evidence_weights


def attention_rollout(attentions):
    """Abnar & Zuidema (2020): average heads, add the residual (0.5 A + 0.5 I), renormalise rows, and
    multiply through the blocks. attentions: list of (B, H, N, N) -> (B, N, N)."""
    result = None
    for a in attentions:
        a = a.float().mean(dim=1)  # (B, N, N)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def attention_relevance(attentions, grads):
    """Chefer, Gur & Wolf (2021): each block's attention weighted by the logit's gradient with respect to
    it, negative evidence dropped, heads averaged, then carried through the residual stream: R = I, then
    R <- R + mean_h((dA * A)+) @ R block by block. attentions, grads: lists of (B, H, N, N) -> (B, N, N).
    Unlike raw attention it says where the evidence *for this logit* is, not only where CLS looks."""
    result = None
    for a, g in zip(attentions, grads):
        cam = (g.float() * a.float()).clamp(min=0).mean(dim=1)  # (B, N, N)
        result = torch.eye(cam.shape[-1], device=cam.device) + cam if result is None else result + cam @ result
    return result


def on_grid(cls_attention, keep, valid, grid):
    """CLS attention over the encoded tokens (B, K) -> (B, grid, grid), zero on patches not encoded."""
    if valid is not None:
        cls_attention = cls_attention * valid
    out = torch.zeros(cls_attention.shape[0], grid * grid, dtype=cls_attention.dtype, device=cls_attention.device)
    return out.scatter(1, keep, cls_attention).reshape(-1, grid, grid)


def last_block_map(attentions, keep, valid, grid):
    """The last block's CLS-to-patch attention, heads averaged, on the grid. The exported ONNX classifier
    computes this map in its graph."""
    return on_grid(attentions[-1].float().mean(dim=1)[:, 0, 1:], keep, valid, grid)


def evidence_map(scores, where, valid, grid):
    """The classifier's own map: each patch's weight in the pooled logit, placed where the model says its
    score comes from (where: (B, K) on a grid x grid map, TumorClassifier.forward_with_attention) -> (B, grid,
    grid)."""
    return on_grid(evidence_weights(scores, valid), where, valid, grid)


def cls_maps(attentions, keep, valid, grid, grads=None):
    """Maps on the patch grid, (B, grid, grid) each: the last block's CLS attention, the rollout, and with the
    logit's gradients (grads, one per block) the gradient-weighted relevance."""
    roll = attention_rollout(attentions)[:, 0, 1:]  # (B, K)
    maps = dict(last_block=last_block_map(attentions, keep, valid, grid), rollout=on_grid(roll, keep, valid, grid))
    if grads is not None:
        maps["relevance"] = on_grid(attention_relevance(attentions, grads)[:, 0, 1:], keep, valid, grid)
    return maps

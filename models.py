"""MIRAM: a ViT masked autoencoder that reconstructs hidden patches at two scales, and the tumor classifier
built on its encoder, and the heatmaps read from its attention. Reads top to bottom: helpers -> encoder -> MIRAM
-> inpainting -> classifier -> heatmaps. Checkpoints: checkpoint.py; devices and kernels: hardware.py.
"""
import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from config import ModelConfig, visible_count
from imaging import foreground_patches
from losses import dual_scale_loss, masked_mse


# ---- helpers -----------------------------------------------------------------------------------------

def sincos_pos_embed_2d(dim: int, grid: int, span: int = 0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (1 + grid*grid, dim); row 0 (the CLS token) is zero. span: the
    grid whose range of positions the grid's spreads over (0: its own, positions 0..grid-1)."""
    def embed_1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)  # (M, d/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, d)

    steps = np.arange(grid, dtype=np.float64) * ((span - 1) / max(grid - 1, 1) if span else 1.0)
    ys, xs = np.meshgrid(steps, steps, indexing="ij")
    emb = np.concatenate([embed_1d(dim // 2, ys), embed_1d(dim // 2, xs)], axis=1)  # (grid*grid, dim)
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major grid order, pixels row-major inside a patch."""
    B, C, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(B, h * w, p * p * C)


def unpatchify(x: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W); the inverse of patchify for a square grid."""
    B, L, _ = x.shape
    h = w = int(round(L ** 0.5))
    x = x.reshape(B, h, w, p, p, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(B, channels, h * p, w * p)


def pixel_mask(mask, patch, size):
    """(B, L) patch mask -> (B, 1, size, size) pixel mask."""
    return unpatchify(mask[..., None].expand(-1, -1, patch * patch).float(), patch, 1)[..., :size, :size]


def make_blocks(dim, depth, heads, mlp_ratio):
    # timm passes device/dtype to norm_layer: a partial, not a lambda.
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList([Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])


def block_with_attention(block: Block, x: torch.Tensor, attn_mask=None):
    """A timm Block's forward on x (B, N, D) that also returns its softmax attention (B, heads, N, N).

    Same weights and maths as block(x) (checked in the tests), computed once; used only when attention is
    asked for, so training keeps the fused kernel. The ONNX graphs export this path.
    """
    attn = block.attn
    B, N, _ = x.shape
    h = block.norm1(x)
    qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, Nq, N)
    weights = (logits if attn_mask is None else logits + attn_mask).softmax(dim=-1)  # mask: additive
    o = (weights @ v).transpose(1, 2).reshape(B, q.shape[2], attn.attn_dim)  # (B, Nq, H*hd)
    o = attn.proj_drop(attn.proj(attn.norm(o)))
    x = x + block.drop_path1(block.ls1(o))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, weights


def autocast_stream(x: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, D) in the autocast dtype where autocast is on, else as they are. The stream between
    blocks then stays in bf16: each block's LayerNorm (which accumulates in fp32 whatever it reads) and
    linear layers take it without a cast, and backward keeps half the bytes (docs/METHODS.md)."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def padding_bias(keys: torch.Tensor, dtype) -> torch.Tensor:
    """keys (B, N), 1 = real token -> the additive attention mask (B, 1, 1, N): 0, or -1e4 for padding.

    Additive and finite, not boolean: the exported graph then needs one Add per block, not Where/IsNaN
    guards; exp(-1e4) is exactly 0 in fp32, bf16 and fp16."""
    return ((keys.to(dtype) - 1) * 1e4)[:, None, None]


def mask_noise(batch: int, num_patches: int, seed_or_generator, device="cpu") -> torch.Tensor:
    """Masking noise (B, L): the patches with the smallest noise stay visible (Encoder.random_masking).
    From a seed, the same masks on every run and machine; from a generator, the next draw of its stream.
    Another masking strategy (blocks, a grid) is another noise here."""
    g = seed_or_generator
    if isinstance(g, int):
        g = torch.Generator().manual_seed(g)
    return torch.rand(batch, num_patches, generator=g).to(device)


# ---- encoder -----------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """Patch embedding + CLS + fixed position embedding + transformer blocks, optionally on visible patches."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.img_size // cfg.patch_size
        self.num_patches = self.grid ** 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(cfg.embed_dim, self.grid, cfg.pos_grid)[None],
                             persistent=False)
        self.blocks = make_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def random_masking(self, noise, mask_ratio):
        """Keeps the int(L * (1 - mask_ratio)) patches with the smallest noise (B, L), per sample (as in MAE).
        -> ids_keep (B, K), mask (B, L) with 1 = masked, ids_restore (B, L)."""
        B, L = noise.shape
        len_keep = visible_count(L, mask_ratio)
        ids_shuffle = torch.argsort(noise, dim=1)  # (B, L) ascending: smallest noise kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
        mask = torch.ones(B, L, device=noise.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return ids_shuffle[:, :len_keep], mask, ids_restore

    def embed(self, imgs, keep=None):
        """Patch embeddings plus positions (B, L, D), or only those of the patches keep (B, K) indexes: the
        embedding is a linear map per patch, so the others are never computed. A matrix product rather than
        the strided convolution: the same map, and its backward pass is several times faster on CPU."""
        B, C, p, g = imgs.shape[0], self.cfg.in_chans, self.cfg.patch_size, self.grid
        patches = imgs.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, C * p * p)  # conv order
        weight = self.patch_embed.weight.reshape(self.patch_embed.out_channels, -1)
        pos = self.pos_embed[:, 1:]
        if keep is not None:
            patches = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))  # (B, K, C*p*p)
            pos = torch.gather(pos.expand(B, -1, -1), 1, keep[..., None].expand(-1, -1, weight.shape[0]))
        return F.linear(patches, weight, self.patch_embed.bias) + pos

    def forward(self, imgs, noise=None, mask_ratio=None, return_attention=None, keep=None, valid=None,
                run_block=None, token_bias=None):
        """imgs (B, C, H, W) -> tokens (B, 1+K, D), mask (B, L) or None, ids_restore, attentions.

        With mask_ratio=None (or 0) every patch is encoded, or only the patches keep (B, K) indexes (the
        foreground: the encoder was pre-trained on subsets of patches), of which valid (B, K) bool says
        which are real (the others pad the batch and no token attends to them); return_attention is None,
        "last" (the last block's only) or "all". run_block(block, x, keys) replaces the blocks' own forward
        where no attention is read out (the ONNX export's fused attention; keys (B, 1+K): 1 = real token).
        token_bias (B, L, D) is added to the patch embeddings (InpaintingMIRAM's damage embedding).
        """
        mask = ids_restore = None
        if keep is None and mask_ratio:  # only the visible patches are embedded
            if noise is None:
                noise = torch.rand(imgs.shape[0], self.num_patches, device=imgs.device)
            keep, mask, ids_restore = self.random_masking(noise, mask_ratio)
            if token_bias is not None:
                token_bias = torch.gather(token_bias, 1, keep[..., None].expand(-1, -1, token_bias.shape[-1]))
        x = self.embed(imgs, keep)  # (B, L or K, D)
        if token_bias is not None:
            x = x + token_bias
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = autocast_stream(torch.cat([cls, x], dim=1))  # (B, 1+K, D)
        keys = attn_mask = None
        if valid is not None:  # padding gets no attention
            keys = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1).to(x.dtype)  # the CLS token is real
            attn_mask = padding_bias(keys, x.dtype)
        attentions = []
        for i, blk in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if return_attention == "all" or (return_attention == "last" and last):
                x, a = block_with_attention(blk, x, attn_mask)
                attentions.append(a)  # (B, H, N, N)
            elif run_block is not None:
                x = run_block(blk, x, keys if keys is not None else x.new_ones(x.shape[:2]))
            else:
                x = blk(x, attn_mask=attn_mask)
        return self.norm(x), mask, ids_restore, attentions


# ---- MIRAM -------------------------------------------------------------------------------------------

@dataclass
class MIRAMOutput:
    loss: torch.Tensor         # LAMBDA_FINE * loss_fine + LAMBDA_COARSE * loss_coarse
    loss_fine: torch.Tensor    # MSE over masked patches, 224-scale
    loss_coarse: torch.Tensor  # MSE over masked patches, at half the image size
    pred_fine: torch.Tensor    # (B, L, p*p*C)
    pred_coarse: torch.Tensor  # (B, L, (p/2)*(p/2)*C)
    mask: torch.Tensor         # (B, L), 1 = masked


class MIRAM(nn.Module):
    def __init__(self, cfg: ModelConfig = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        grid = self.encoder.grid
        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(cfg.decoder_embed_dim, grid)[None],
                             persistent=False)
        self.decoder_blocks = make_blocks(cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads,
                                          cfg.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim, eps=1e-6)
        coarse_p = cfg.patch_size // 2
        self.head_fine = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size ** 2 * cfg.in_chans)
        self.head_coarse = nn.Linear(cfg.decoder_embed_dim, coarse_p ** 2 * cfg.in_chans)
        self.apply(_init_weights)
        torch.nn.init.normal_(self.encoder.cls_token, std=0.02)
        torch.nn.init.normal_(self.mask_token, std=0.02)

    def decoder_features(self, latent, ids_restore=None):
        """latent (B, 1+K, D) -> the decoder's normalised patch tokens (B, L, Dd). ids_restore (B, L) puts
        the K visible tokens and L-K mask tokens back in patch order; None: every patch was encoded, in order."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        if ids_restore is not None:
            B, L = ids_restore.shape
            mask_tokens = self.mask_token.expand(B, L + 1 - x.shape[1], -1)  # (B, L-K, Dd)
            x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, Dd), visible first
            x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # original order
            x = torch.cat([x[:, :1], x_], dim=1)
        x = autocast_stream(x + self.decoder_pos_embed)  # (B, 1+L, Dd)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)[:, 1:]  # (B, L, Dd)

    def forward_decoder(self, latent, ids_restore):
        """latent (B, 1+K, D) -> fine (B, L, p*p*C), coarse (B, L, (p/2)^2*C)."""
        x = self.decoder_features(latent, ids_restore)
        return self.head_fine(x), self.head_coarse(x)

    def targets(self, imgs):
        """Patches of the input itself (fine) and of its 2x2 average pooling (coarse)."""
        p = self.cfg.patch_size
        return patchify(imgs, p), patchify(F.avg_pool2d(imgs, 2), p // 2)

    def forward(self, imgs, noise=None, mask_ratio=None, known=None):
        """known (L,) or (B, L) bool: only these patches' pixels are real (adapt_to_images), so only masked
        patches among them count in the loss; None: every masked patch counts."""
        mask_ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        if not mask_ratio:
            raise ValueError("MIRAM.forward needs a mask ratio > 0")
        latent, mask, ids_restore, _ = self.encoder(imgs, noise, mask_ratio)
        pred_fine, pred_coarse = self.forward_decoder(latent, ids_restore)
        target_fine, target_coarse = self.targets(imgs)
        scored = mask if known is None else mask * known.to(mask.dtype)
        loss_fine = masked_mse(pred_fine, target_fine, scored)
        loss_coarse = masked_mse(pred_coarse, target_coarse, scored)
        loss = dual_scale_loss(loss_fine, loss_coarse, self.cfg.lambda_fine, self.cfg.lambda_coarse)
        return MIRAMOutput(loss, loss_fine, loss_coarse, pred_fine, pred_coarse, mask)

    def reconstruct(self, imgs, noise=None, mask_ratio=None):
        """Images at both scales: (fine (B,C,H,W), coarse (B,C,H/2,W/2), mask (B, L))."""
        out = self.forward(imgs, noise, mask_ratio)
        p, c = self.cfg.patch_size, self.cfg.in_chans
        return unpatchify(out.pred_fine, p, c), unpatchify(out.pred_coarse, p // 2, c), out.mask


def _init_weights(m):
    if isinstance(m, nn.Linear):
        torch.nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        # as a linear layer on the flattened patch (MAE)
        torch.nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ---- inpainting --------------------------------------------------------------------------------------

# Gaussian smoothing (px) of the predicted correction: each patch's correction comes from its own token,
# and neighbouring patches' corrections need not meet at their shared border (steps lowered SSIM).
CORRECTION_SMOOTH_SIGMA = 2.0


def smoothing_matrix(n, sigma):
    """(n, n) matrix M such that M @ x blurs the columns of x with a Gaussian, renormalised at the edges."""
    i = torch.arange(n, dtype=torch.float32)
    m = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma ** 2))
    m = m * (abs(i[:, None] - i[None, :]) <= int(3 * sigma + 0.5))
    return m / m.sum(1, keepdim=True)


class InpaintingMIRAM(nn.Module):
    """The pre-trained MIRAM, fine-tuned to correct a classical fill of a damaged region.

    Input: the slice with its hole pre-filled by biharmonic inpainting (dataset.biharmonic_fill), and
    weight (dataset.fill_weight): 0 outside the hole, ramping to 1 inside it. Every patch is encoded (the
    damaged ones too, their pre-fill standing in for the lost pixels), each token told which of its
    pixels are damaged by a learned embedding of its patch of the weight; the decoder's new head predicts a
    correction per pixel, applied with the weight. The head starts at zero: untrained, the model returns the biharmonic fill itself.
    """

    def __init__(self, cfg: ModelConfig = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.mae = MIRAM(cfg)
        self.damage_embed = nn.Linear(cfg.patch_size ** 2, cfg.embed_dim)
        nn.init.zeros_(self.damage_embed.weight)
        nn.init.zeros_(self.damage_embed.bias)
        self.correction_head = nn.Linear(cfg.decoder_embed_dim, cfg.patch_size ** 2 * cfg.in_chans)
        nn.init.zeros_(self.correction_head.weight)
        nn.init.zeros_(self.correction_head.bias)
        self.register_buffer("smooth", smoothing_matrix(cfg.img_size, CORRECTION_SMOOTH_SIGMA), persistent=False)
        # Kept for the checkpoint, unused here (every patch is encoded; the new head predicts): frozen, so
        # data-parallel training finds no parameter without a gradient.
        for p in (self.mae.mask_token, *self.mae.head_fine.parameters(), *self.mae.head_coarse.parameters()):
            p.requires_grad_(False)

    def forward(self, prefilled, weight):
        """prefilled (B, C, S, S), weight (B, 1, S, S) -> the restored slice (B, C, S, S)."""
        p = self.cfg.patch_size
        latent, _, _, _ = self.mae.encoder(prefilled, token_bias=self.damage_embed(patchify(weight, p)))
        correction = unpatchify(self.correction_head(self.mae.decoder_features(latent)), p, self.cfg.in_chans)
        correction = self.smooth @ correction @ self.smooth.T  # no steps at patch borders
        return prefilled + weight * correction


# ---- classifier --------------------------------------------------------------------------------------

class TumorClassifier(nn.Module):
    """The MIRAM encoder on the foreground patches (no masking); a linear head scores each patch token (its
    evidence of tumor) and the slice's logit pools those scores (log-mean-exp: a smooth maximum, as in
    multiple-instance learning). The map is the head's own: each patch's weight in the pooled logit.

    A CLS-token head was the spec's; on a small labelled set it did not fit and its attention missed the
    tumor (measured): the evidence head is trained on the slice label and, where a mask exists, on each
    patch's own label (classify.py), and what it points at is what decided the logit. With cfg.conv_evidence a
    ConvEvidence branch's score of each patch is added to the head's before pooling: still one map.

    K classes (cfg.num_classes > 2, class folders): class 0 is the reference (tumor-free where the set has
    such a folder) with logit 0, and each other class pools its own patch scores, so that with two classes
    this is the binary model above. The map returned is that of the most probable of classes 1..K-1: the
    predicted class's evidence, or where class 0 is predicted, the evidence it was weighed against.
    """

    def __init__(self, cfg: ModelConfig = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.evidence = nn.Linear(cfg.embed_dim, cfg.num_classes - 1)  # a score a patch per class but the reference
        self.apply(_init_weights)
        torch.nn.init.normal_(self.encoder.cls_token, std=0.02)
        # after _init_weights: the branch keeps PyTorch's own initialisation for convolutions under ReLUs
        self.conv_evidence = (ConvEvidence(cfg.in_chans, cfg.patch_size, cfg.num_classes - 1, cfg.conv_cell)
                              if cfg.conv_evidence else None)

    def foreground(self, imgs):
        """(keep, valid) tensors for imgs: the patches above cfg.foreground_threshold, as
        imaging.foreground_patches selects them (the ONNX runtime path makes the same selection)."""
        keep, valid = foreground_patches(imgs.detach().float().cpu().numpy(), self.cfg.patch_size,
                                         self.cfg.foreground_threshold)
        return torch.from_numpy(keep).to(imgs.device), torch.from_numpy(valid).to(imgs.device)

    def forward(self, imgs, keep=None, valid=None, with_evidence=False):
        """imgs (B, C, H, W) -> logits, (B,) with two classes, (B, num_classes) with more; with_evidence: also
        the shown class's patch scores (B, K), keep and valid (keep/valid as from self.foreground(imgs),
        computed when None) and where each score sits on the map's grid (B, K; see forward_with_attention)."""
        logits, _, keep, valid, scores, where = self.forward_with_attention(imgs, None, keep, valid)
        return (logits, scores, keep, valid, where) if with_evidence else logits

    def forward_with_attention(self, imgs, which="all", keep=None, valid=None, run_block=None):
        """-> logits (as forward), attentions: list of (B, H, 1+K, 1+K), one per block ("all"), the last
        block's ("last") or none (None), keep (B, K) and valid (B, K): the patches those K tokens are, and the
        shown class's patch scores (B, K) and where on the map's grid (self.map_grid, row-major) each sits (B,
        K): its patch, or with the convolutional branch the cell whose score the patch took. run_block: see
        Encoder.forward."""
        if keep is None:
            keep, valid = self.foreground(imgs)
            if valid.all():
                valid = None  # no padding: no mask to apply
        tokens, _, _, attentions = self.encoder(imgs, return_attention=which, keep=keep, valid=valid,
                                                run_block=run_block)
        scores = self.evidence(tokens[:, 1:]).float()  # (B, K, classes - 1)
        where = keep[..., None].expand(-1, -1, scores.shape[-1])  # (B, K, classes - 1) on self.map_grid
        if self.conv_evidence is not None:
            cells, cell_at = self.conv_evidence(imgs)  # (B, L, classes - 1) each
            scores = scores + torch.gather(cells.float(), 1, where)
            where = torch.gather(cell_at, 1, where)
        pooled = pool_evidence(scores.transpose(1, 2), None if valid is None else valid[:, None])  # (B, classes-1)
        if self.cfg.num_classes == 2:
            return pooled[:, 0], attentions, keep, valid, scores[..., 0], where[..., 0]
        shown = pooled.argmax(dim=1)[:, None, None].expand(-1, scores.shape[1], 1)  # (B, K, 1)
        logits = torch.cat([torch.zeros_like(pooled[:, :1]), pooled], dim=1)  # (B, classes)
        return logits, attentions, keep, valid, torch.gather(scores, 2, shown)[..., 0], torch.gather(where, 2, shown)[..., 0]

    @property
    def map_grid(self):
        """The side of the evidence map's grid: the patch grid, or with the convolutional branch its cells'
        (each patch's weight sits on the cell whose score the patch took, cfg.conv_cell pixels a side)."""
        return self.encoder.grid * (self.conv_evidence.cells_per_patch if self.conv_evidence is not None else 1)


def class_probabilities(logits):
    """Logits (B,) of two classes -> p(class 1) (B,); (B, K) of more -> softmax (B, K)."""
    return torch.sigmoid(logits) if logits.dim() == 1 else logits.softmax(dim=1)


def shown_logit(logits):
    """The logit whose evidence the map shows (B,): the only one of two classes, else the largest of classes
    1..K-1 (TumorClassifier)."""
    return logits if logits.dim() == 1 else logits[:, 1:].amax(dim=1)


class ConvEvidence(nn.Module):
    """Four convolution stages (16, 32, 64, 64 channels; 3x3 convolutions, batch norm, ReLU; a 2x2 max-pool
    after each of the first log2(cell)) scoring every cell-pixel cell of a slice, its cells max-pooled to the
    patch grid. Trained from scratch beside the pre-trained encoder: a lesion a few pixels wide looks the same
    to it at every position, where the linear patch embedding must learn it at each of a patch's 256 pixels
    apart."""

    def __init__(self, in_chans: int, patch_size: int, outputs: int = 1, cell: int = 8):
        super().__init__()
        layers = []
        for i, (cin, cout) in enumerate(((in_chans, 16), (16, 32), (32, 64), (64, 64))):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            if 2 ** (i + 1) <= cell:
                layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers, nn.Conv2d(64, outputs, 1))
        self.cells_per_patch = patch_size // cell

    def cells(self, imgs):
        """(B, C, H, W) -> each cell's scores (B, outputs, H/cell, W/cell)."""
        return self.net(imgs)

    def forward(self, imgs):
        """(B, C, H, W) -> each patch's scores, its strongest cell's (B, L, outputs), and where that cell is
        (B, L, outputs): its index on the cell grid, row-major; patches in row-major order."""
        cells = self.cells(imgs)  # (B, O, G*n, G*n), n cells a patch side
        b, o, side, _ = cells.shape
        n, g = self.cells_per_patch, side // self.cells_per_patch
        by_patch = cells.reshape(b, o, g, n, g, n).permute(0, 1, 2, 4, 3, 5).reshape(b, o, g * g, n * n)
        scores, best = by_patch.max(dim=-1)  # the max-pool over each patch's cells, and which cell won
        patch = torch.arange(g * g, device=cells.device)
        where = ((patch // g) * n + best // n) * side + (patch % g) * n + best % n
        return scores.transpose(1, 2), where.transpose(1, 2)


def _without_padding(scores, valid):
    """Patch scores (B, K) with the padding's (valid False) pushed out of any softmax or logsumexp."""
    return scores if valid is None else scores.masked_fill(~valid.to(torch.bool), -1e4)


def pool_evidence(scores, valid=None):
    """Log-mean-exp of the patch scores (..., K) over the real patches (valid broadcast to them) -> (...)."""
    if valid is None:
        return torch.logsumexp(scores, dim=-1) - math.log(scores.shape[-1])
    count = valid.to(torch.bool).sum(dim=-1).clamp(min=1).to(scores.dtype)
    return torch.logsumexp(_without_padding(scores, valid), dim=-1) - torch.log(count)


def evidence_weights(scores, valid=None):
    """Each patch's weight in pool_evidence's logit, softmax over the real patches: (B, K), rows sum to 1."""
    return _without_padding(scores, valid).softmax(dim=1)


# ---- the models as numpy callables (restoration.Restorer runs PyTorch and ONNX Runtime alike) ---------

def torch_predictor(model, device):

    @torch.no_grad()
    def predict(imgs, noise, ratio):
        out = model(torch.from_numpy(imgs).to(device), torch.from_numpy(noise).to(device), ratio)
        p, c = model.cfg.patch_size, model.cfg.in_chans
        return (unpatchify(out.pred_fine.float(), p, c).cpu().numpy(),
                unpatchify(out.pred_coarse.float(), p // 2, c).cpu().numpy())
    return predict


def torch_upscaler(model, device):

    @torch.no_grad()
    def upscale(tiles):
        return model(torch.from_numpy(tiles).to(device)).float().cpu().numpy()
    return upscale


def torch_corrector(model, device):

    @torch.no_grad()
    def correct(prefilled, weight):
        return model(torch.from_numpy(prefilled).to(device), torch.from_numpy(weight).to(device)).float().cpu().numpy()
    return correct

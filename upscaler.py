"""The super-resolution network (train.py --superres, enhance.py --mode superres): a small convolutional
super-resolver at the low resolution, reading the pre-trained MIRAM's decoder features or working alone."""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import ModelConfig
from models import MIRAM, unpatchify


class DetailCNN(nn.Module):
    """A small convolutional super-resolver (EDSR-sized: residual blocks, no normalisation), working at the
    low resolution: the bicubic enlargement (B, C, S, S), less its local mean, is folded into f*f channels at
    S/f (pixel unshuffle, which loses nothing); the detail predicted there is unfolded back (pixel shuffle) and
    added to the enlargement. No layer has a bias and the borders repeat the edge pixels, so a flat image gets
    no detail at all (zero in, zero out) and a tile's edges are not edges of the image. `extra` feature
    channels (MIRAM's) scale the first layer's channels, so they modulate detail and never paint it into a
    flat region. The last layer starts at zero: untrained, it returns the interpolation itself. Alone (extra=0)
    it is the baseline a user would otherwise train."""

    WIDTH, BLOCKS, FACTOR, MEAN_WINDOW = 32, 4, 2, 5

    def __init__(self, in_chans=1, extra=0):
        super().__init__()
        folded = in_chans * self.FACTOR ** 2
        conv = partial(nn.Conv2d, kernel_size=3, padding=1, padding_mode="replicate", bias=False)
        self.fold, self.unfold = nn.PixelUnshuffle(self.FACTOR), nn.PixelShuffle(self.FACTOR)
        self.head = conv(folded, self.WIDTH)
        self.gate = nn.Conv2d(extra, self.WIDTH, 1) if extra else None
        self.blocks = nn.ModuleList(nn.Sequential(conv(self.WIDTH, self.WIDTH), nn.ReLU(inplace=True),
                                                  conv(self.WIDTH, self.WIDTH)) for _ in range(self.BLOCKS))
        self.tail = conv(self.WIDTH, folded)
        nn.init.zeros_(self.tail.weight)
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def forward(self, upsampled, features=None):
        local_mean = F.avg_pool2d(upsampled, self.MEAN_WINDOW, stride=1, padding=self.MEAN_WINDOW // 2,
                                  count_include_pad=False)
        h = self.head(self.fold(upsampled - local_mean))
        if self.gate is not None:
            h = h * (1 + self.gate(features))
        for block in self.blocks:
            h = h + block(h)
        return upsampled + self.unfold(self.tail(h))


class SuperResMIRAM(nn.Module):
    """The pre-trained MIRAM, fine-tuned to restore the detail a coarser acquisition lost.

    Input: a slice enlarged twice by bicubic interpolation, at the scan's own (doubled) pixel scale. Every patch
    is encoded; each decoder token is projected to cfg.superres_features channels over its patch at the low
    resolution, and a DetailCNN reads them beside the pixels: MIRAM says what tissue a patch holds, the
    convolutions restore its edges. With superres_features=0 there is no MIRAM: the DetailCNN alone.
    """

    def __init__(self, cfg: ModelConfig = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.cells = cfg.patch_size // DetailCNN.FACTOR  # a patch's side at the low resolution
        self.mae = self.features = None
        if cfg.superres_features:
            self.mae = MIRAM(cfg)
            self.features = nn.Linear(cfg.decoder_embed_dim, self.cells ** 2 * cfg.superres_features)
            for p in (self.mae.mask_token, *self.mae.head_fine.parameters(), *self.mae.head_coarse.parameters()):
                p.requires_grad_(False)  # kept for the checkpoint, unused (as InpaintingMIRAM's)
        self.detail = DetailCNN(cfg.in_chans, cfg.superres_features)

    def forward(self, upsampled):
        """upsampled (B, C, S, S) -> the restored slice (B, C, S, S)."""
        if self.mae is None:
            return self.detail(upsampled)
        latent, _, _, _ = self.mae.encoder(upsampled)
        tokens = self.features(self.mae.decoder_features(latent))  # (B, L, cells*cells*F)
        return self.detail(upsampled, unpatchify(tokens, self.cells, self.cfg.superres_features))

"""Every default of MIRAM in one place, and the only reader of MIRAM_* environment variables.

Precedence, lowest to highest: the defaults below -> a preset (`MIRAM_PRESET` / `--preset`) ->
`MIRAM_<NAME>` environment variables -> a script's `--<name>` flags. Every script prints the resolved
configuration once at start.
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, fields

# ---- the spec's defaults ----------------------------------------------------------------------------
# Paths. An empty DATASET_PATH means "use the embedded demo data" (built once from the MNI152 template).
DRIVE_PATH = ""
DATASET_PATH = os.path.join(DRIVE_PATH, "mri_project", "Brain_MRI") if DRIVE_PATH else ""
OUTPUT_PATH = "outputs"
DEMO_DATA_PATH = os.path.join("data", "demo", "Brain_MRI")
# real heads from installed packages, never trained on (dataset.py --build-transfer; built there on first use)
BUILTIN_TRANSFER_PATH = os.path.join("data", "transfer", "Brain_MRI")

# What the phases write into OUTPUT_PATH and read back from it.
ARTIFACTS = {
    "checkpoint": "checkpoint.pth",              # pre-training, resumable
    "mae": "best_miram_mae.pth",                 # pre-training, best validation loss
    "train_log": "train_log.jsonl",
    "loss_curve": "loss_curve.png",
    "anatomy_variants": "anatomy_variants.pt",   # the training slices' ANATOMY_VARIANTS, drawn once per run
    "inpaint_checkpoint": "inpaint_checkpoint.pth",
    "inpaint": "best_miram_inpaint.pth",
    "inpaint_log": "inpaint_log.jsonl",
    "inpaint_metrics": "inpaint_metrics.json",   # hole MSE against the biharmonic fill: validation, transfer set
    "classifier_checkpoint": "classifier_checkpoint.pth",
    "classifier": "best_tumor_classifier.pth",
    "classifier_log": "classifier_log.jsonl",
    "classification_metrics": "classification_metrics.json",
    "eval_metrics": "eval_metrics.json",
    "eval_sample": "miram_eval_sample.png",
    "eval_transfer_sample": "miram_eval_transfer.png",  # a slice of each transfer head: every MIRAM fill
    "eval_sweep": "eval_sweep.png",
    "classifier_onnx": "miram_model_optimized.onnx",
    "mae_onnx": "miram_mae.onnx",
    "inpaint_onnx": "miram_inpaint.onnx",
    "deploy_benchmark": "deploy_benchmark.json",
    "demo_summary": "demo_summary.json",
    "compare": "compare.json",                   # bench/compare.py: label efficiency, every run and the summary
    "compare_table": "compare.md",
    "compare_plot": "compare.png",
    "lesion_limit": "lesion_limit.json",         # bench/lesion_limit.py: which lesion sizes and contrasts are learned
    "lesion_limit_table": "lesion_limit.md",
    "transfer_folds": "transfer_folds.json",     # bench/transfer_folds.py: the transfer set's own labels, a head out
    "transfer_folds_table": "transfer_folds.md",
    "train_throughput": "train_throughput.json",  # bench/train_throughput.py --json (make bench)
    "allocator": "allocator.json",                # bench/allocator.py --json (make bench): malloc policy, paired
}


def margin_key(method):
    """The key of a MIRAM fill's margin over the best classical fill in eval_metrics.json, in a set's results
    and in each head's: "miram" -> "margin_db", "miram_adapted_seamless" -> "margin_db_adapted_seamless"
    (evaluate.py writes them; the demo summary and the report read them)."""
    return "margin_db" + method[len("miram"):]

# Model (ViT-S/16 encoder, light decoder).
IMG_SIZE = 224
PATCH_SIZE = 16
IN_CHANS = 1
EMBED_DIM = 384
DEPTH = 12
NUM_HEADS = 6
MLP_RATIO = 4.0
DECODER_EMBED_DIM = 256
DECODER_DEPTH = 4
DECODER_NUM_HEADS = 8
MASK_RATIO = 0.75
LAMBDA_FINE = 1.0
LAMBDA_COARSE = 0.5
# The classifier encodes only the patches whose mean intensity (of the [0, 1]-scaled slice) exceeds this:
# empty background carries no evidence, and a brain slice is often half background. Negative: every patch.
FOREGROUND_THRESHOLD = 0.01

# Files that would decode to more values than this are refused from their header (a compressed 1 MB file
# can hold a 30000 x 30000 image). 2**26 = 67 million: a 512 x 512 x 256 volume, an 8192 x 8192 slice.
MAX_PIXELS = 2 ** 26

# Pre-training.
N_EPOCHS = 200
BATCH_SIZE = 16
LEARNING_RATE = 1.5e-4
WEIGHT_DECAY = 0.05


class MiramError(Exception):
    """An error the user can cause and fix (bad data, bad setting, missing checkpoint).

    Scripts print its message as one line and exit non-zero, without a traceback.
    """


class ConfigError(MiramError):
    pass


@dataclass
class ModelConfig:
    """The architecture: everything needed to rebuild a model from a checkpoint."""
    img_size: int = IMG_SIZE
    patch_size: int = PATCH_SIZE
    in_chans: int = IN_CHANS
    embed_dim: int = EMBED_DIM
    depth: int = DEPTH
    num_heads: int = NUM_HEADS
    mlp_ratio: float = MLP_RATIO
    decoder_embed_dim: int = DECODER_EMBED_DIM
    decoder_depth: int = DECODER_DEPTH
    decoder_num_heads: int = DECODER_NUM_HEADS
    mask_ratio: float = MASK_RATIO
    lambda_fine: float = LAMBDA_FINE
    lambda_coarse: float = LAMBDA_COARSE
    foreground_threshold: float = FOREGROUND_THRESHOLD  # the classifier's; the MAE ignores it
    # The patch grid the fixed sin-cos positions span (0: this model's own). An encoder pre-trained on an 8x8
    # grid and read at 14x14 keeps positions inside the range it learned, at finer steps.
    pos_grid: int = 0
    # The classifier's convolutional evidence branch (CLS_CONV_EVIDENCE); the MAE ignores it.
    conv_evidence: bool = False

    def __post_init__(self):
        _check_model(self)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_visible(self) -> int:
        return visible_count(self.num_patches, self.mask_ratio)

    def to_dict(self):
        return dataclasses.asdict(self)


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible at a mask ratio: int(L * (1 - ratio)), as MAE keeps them."""
    return int(num_patches * (1 - mask_ratio))


def _check_model(m):
    def need(ok, name, why):
        if not ok:
            raise ConfigError(f"bad setting {name}: {why}")
    # Upper bounds too: a checkpoint's stored settings decide what is allocated before its weights are read.
    for name, top in (("img_size", 2048), ("patch_size", 256), ("in_chans", 16), ("embed_dim", 4096), ("depth", 64),
                      ("num_heads", 64), ("decoder_embed_dim", 4096), ("decoder_depth", 64), ("decoder_num_heads", 64)):
        value = getattr(m, name)
        need(isinstance(value, int) and not isinstance(value, bool) and 0 < value <= top, name.upper(),
             f"must be an integer in 1..{top}, got {value!r}")
    need(isinstance(m.pos_grid, int) and not isinstance(m.pos_grid, bool) and 0 <= m.pos_grid <= 64, "POS_GRID",
         f"must be an integer in 0..64, got {m.pos_grid!r}")
    need(isinstance(m.conv_evidence, bool), "CLS_CONV_EVIDENCE", f"must be true or false, got {m.conv_evidence!r}")
    need(not m.conv_evidence or m.patch_size % 8 == 0, "CLS_CONV_EVIDENCE",
         f"needs PATCH_SIZE a multiple of 8 (the branch scores 8-pixel cells), got {m.patch_size}")
    for name in ("mlp_ratio", "mask_ratio", "lambda_fine", "lambda_coarse", "foreground_threshold"):
        value = getattr(m, name)
        need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), name.upper(),
             f"must be a finite number, got {value!r}")
    need(m.patch_size % 2 == 0, "PATCH_SIZE", f"must be even (the coarse head uses PATCH_SIZE/2), got {m.patch_size}")
    need(m.img_size % m.patch_size == 0, "IMG_SIZE",
         f"{m.img_size} is not a multiple of PATCH_SIZE {m.patch_size}")
    need(m.embed_dim % m.num_heads == 0, "EMBED_DIM", f"{m.embed_dim} is not divisible by NUM_HEADS {m.num_heads}")
    need(m.decoder_embed_dim % m.decoder_num_heads == 0, "DECODER_EMBED_DIM",
         f"{m.decoder_embed_dim} is not divisible by DECODER_NUM_HEADS {m.decoder_num_heads}")
    need(m.embed_dim % 4 == 0 and m.decoder_embed_dim % 4 == 0, "EMBED_DIM",
         "embedding sizes must be multiples of 4 (2-D sin-cos position embedding)")
    need(0.0 < m.mask_ratio < 1.0, "MASK_RATIO", f"must be in (0, 1): a share of the patches to hide, got {m.mask_ratio}")
    need(visible_count((m.img_size // m.patch_size) ** 2, m.mask_ratio) >= 1, "MASK_RATIO",
         f"{m.mask_ratio} leaves no visible patch")
    need(m.foreground_threshold < 1.0, "FOREGROUND_THRESHOLD",
         f"{m.foreground_threshold} would drop every patch of a [0, 1]-scaled slice")
    need(0 < m.mlp_ratio <= 16, "MLP_RATIO", f"must be in (0, 16], got {m.mlp_ratio}")
    need((m.img_size // m.patch_size) ** 2 <= 4096, "IMG_SIZE",
         f"{m.img_size} with PATCH_SIZE {m.patch_size} makes {(m.img_size // m.patch_size) ** 2} patches (at most 4096)")
    need(m.lambda_fine >= 0 and m.lambda_coarse >= 0 and m.lambda_fine + m.lambda_coarse > 0,
         "LAMBDA_FINE", "loss weights must be non-negative and not both zero")


@dataclass
class Config:
    # paths
    DATASET_PATH: str = DATASET_PATH
    OUTPUT_PATH: str = OUTPUT_PATH
    DEMO_DATA_PATH: str = DEMO_DATA_PATH
    # a second set every quality figure is also reported on (all of its slices, never trained on): a folder
    # in any layout, or "builtin" for the packaged real heads of `dataset.py --build-transfer`; "" for none
    TRANSFER_PATH: str = ""
    # model
    IMG_SIZE: int = IMG_SIZE
    PATCH_SIZE: int = PATCH_SIZE
    IN_CHANS: int = IN_CHANS
    EMBED_DIM: int = EMBED_DIM
    DEPTH: int = DEPTH
    NUM_HEADS: int = NUM_HEADS
    MLP_RATIO: float = MLP_RATIO
    DECODER_EMBED_DIM: int = DECODER_EMBED_DIM
    DECODER_DEPTH: int = DECODER_DEPTH
    DECODER_NUM_HEADS: int = DECODER_NUM_HEADS
    MASK_RATIO: float = MASK_RATIO
    FOREGROUND_THRESHOLD: float = FOREGROUND_THRESHOLD
    LAMBDA_FINE: float = LAMBDA_FINE
    LAMBDA_COARSE: float = LAMBDA_COARSE
    # pre-training
    N_EPOCHS: int = N_EPOCHS
    BATCH_SIZE: int = BATCH_SIZE
    LEARNING_RATE: float = LEARNING_RATE  # for a batch of 16; see effective_lr()
    WEIGHT_DECAY: float = WEIGHT_DECAY
    WARMUP_EPOCHS: int = 10
    MIN_LR: float = 0.0
    ACCUM_STEPS: int = 1
    CHECKPOINT_EVERY: int = 1  # epochs between resumable checkpoints (and always after the last epoch)
    AUGMENT: bool = True
    # pre-training: the share of slices framed wider (a head smaller in the frame and off its centre, as
    # other scanners frame it: dataset.augment_params). Without it the MAE learned where the template's
    # brain lies and painted brain into the background of smaller heads. Demo, 2 seeds (docs/RESULTS.md):
    # masked-patch PSNR over the best classical fill on the transfer set +0.20/-0.01 -> +0.64/+0.89 dB,
    # validation +2.07/+1.78 -> +2.08/+2.03 dB. Every slice framed wider (1 seed): +0.99 dB transfer, +1.67 validation.
    # Scaled down to 45% rather than 70% (with the variants' cropped field of view and sharpening; seeds 1
    # and 2): transfer +0.46/+0.70 -> +1.18/+1.13 dB, validation +2.06/+2.07 -> +1.89/+1.86 (docs/METHODS.md)
    AUGMENT_WIDER: float = 0.5
    # pre-training and the inpainting fine-tune: other plausible brains drawn once per training slice
    # (dataset.anatomy_transform: elastic, T2-like contrast, bias field, gamma, resolution, sharpness, field
    # of view, noise); 0: none.
    # The demo's 4 (measured, docs/RESULTS.md): masked-patch PSNR on the transfer set -1.50 -> +0.20 dB
    # against the best classical fill, -0.31 dB on the validation split, and a classifier fine-tuned from it
    # ahead (3 seeds); in the inpainting fine-tune, the transfer set's gain over biharmonic +0.41 -> +1.30 dB,
    # validation unchanged. Variants in the classifier's own training lowered its AUROC, so it trains on the
    # slices as they are
    ANATOMY_VARIANTS: int = 0
    AMP: bool = False  # bf16 autocast (GPU without bf16: fp16); a CPU without native bf16 stays in fp32
    DEVICE: str = "auto"
    SEED: int = 0
    # data
    VAL_FRACTION: float = 0.2
    # the subject split's own seed, apart from SEED: training seeds can vary while validation stays held out
    SPLIT_SEED: int = 0
    # the subjects held out for validation, comma-separated (SUBJECT_PATTERN's ids), in place of a draw by
    # SPLIT_SEED and VAL_FRACTION: with a few subjects, each can be held out in turn (bench/transfer_folds.py)
    VAL_SUBJECTS: str = ""
    # regex on the file name stem; group 1 is the subject id. Default: drop a trailing "_<slice number>".
    SUBJECT_PATTERN: str = r"^(.+?)(?:_\d+)?$"
    SLICE_AXIS: int = 2  # NIfTI volumes, turned to RAS, are cut into 2-D slices along this axis (2: axial)
    MAX_PIXELS: int = MAX_PIXELS  # values a file may decode to; checked from its header first
    EVAL_SEED: int = 1234  # masks used for validation and evaluation, identical on every run
    # evaluate.py also fills each image with a copy of the MAE fine-tuned on its visible patches for this many
    # steps (models.adapt_to_images; 0: off), at this rate: a scan unlike the training data teaches its own
    # contrast first. Chosen on the transfer set, keeping the validation slabs' figure (docs/METHODS.md says
    # what else was tried).
    ADAPT_STEPS: int = 0
    ADAPT_LR: float = 3e-5
    # evaluate.py also reports each MIRAM fill blended into the image by the Poisson equation of seamless
    # cloning (restoration.seamless_fill: the fill's structure, the scan's level at every visible patch's edge)
    # beside the fill pasted as it is
    SEAMLESS_FILL: bool = True
    # tumor classification (fine-tuning the pre-trained encoder)
    CLS_EPOCHS: int = 30
    CLS_LR: float = 5e-4          # the head's rate for a batch of 16; encoder blocks get less (LAYER_DECAY)
    LAYER_DECAY: float = 0.75     # block i of D gets CLS_LR * LAYER_DECAY ** (D - i)
    CLS_WARMUP_EPOCHS: int = 3
    CLS_WEIGHT_DECAY: float = 0.05
    CLS_THRESHOLD: float = 0.5    # the loss is class-balanced, so 0.5 is the natural operating point
    # weight of the patch labels (from the masks) beside the slice label; 0: slice labels only. 3 was the best
    # of 1, 3, 6, 10 on the demo slices (AUROC and pointing game, one seed each: docs/RESULTS.md)
    CLS_PATCH_WEIGHT: float = 3.0
    # the share of the labelled training subjects the classifier learns from (whole subjects, drawn by
    # SPLIT_SEED): how it does with fewer labels
    CLS_LABEL_FRACTION: float = 1.0
    # the share of each classifier training batch replaced by a labelled training slice with a lesion of a
    # labelled slice pasted in (dataset.LesionPaster), its size and contrast varied: a few labelled lesions seen
    # on every labelled anatomy, each tumor-free slice with and without one. 0: the labelled slices as they are
    CLS_LESION_PASTE: float = 0.0
    # self-training on the training split's slices left unlabelled (outside CLS_LABEL_FRACTION, or without a
    # mask file): a first classifier (the teacher, artifacts *_teacher) is trained on the labelled slices,
    # this share of the unlabelled ones takes the label it is surest of (the most and least likely, in the
    # labelled slices' tumor ratio), and the classifier is trained again from the pre-trained encoder on both,
    # for as many optimizer steps; of the two, the lower validation loss is the classifier kept. A
    # pseudo-labelled tumor slice has no known outline: it gets no patch labels and no pasted lesion. 0: off
    CLS_PSEUDO_LABELS: float = 0.0
    # the classifier's own anatomy variants (dataset.anatomy_transform, as ANATOMY_VARIANTS draws them for
    # pre-training, each mask deformed and cropped with its image): each training step draws every labelled
    # slice as itself or one of its K variants; a variant whose cropped field of view cut its lesion out is
    # tumor-free. A pseudo-labelled tumor slice, whose outline is not known, stays itself. 0: off
    CLS_ANATOMY_VARIANTS: int = 0
    # classify each slice also moved by half a patch down, right and both, averaging the probabilities and the
    # heatmaps moved back (four passes): a lesion on a patch corner, split over four patches, lies whole in
    # one patch of another view. Every evaluation reports both (classification_metrics.json "other_views").
    # Demo, 5 seeds (docs/RESULTS.md): pointing game 0.90 -> 0.94, sensitivity 0.90 -> 0.95, specificity
    # 0.98 -> 0.92, AUROC 0.986 -> 0.990 (within the seeds' spread). Off by default: one pass is what the
    # deployed model's latency is measured for, and neither setting is better on every figure
    CLS_SHIFT_AVERAGE: bool = False
    # the classifier's input size (0: the pre-trained encoder's). Small lesions are lost at the demo's 128
    # pixels and learnable near the template's own resolution (bench/lesion_limit.py): a 128-pixel encoder
    # reads 224-pixel slices with its positions spread over the same range (ModelConfig.pos_grid)
    CLS_IMG_SIZE: int = 0
    # a small convolutional network beside the encoder (four stages, 16-64 channels) whose 8-pixel cell scores,
    # max-pooled to the patches, are added to each patch's evidence score: it shares one blob detector over
    # every position where the 16-pixel linear patch embedding learns each position apart. Measured on
    # lesions of radius 3-7 pixels at 224 pixels with bench/lesion_limit.py (README). Off in the demo: its
    # large tumors do not need it, and it costs time at every step
    CLS_CONV_EVIDENCE: bool = False
    # inpainting fine-tune (`train.py --inpaint`): the pre-trained MAE learns to correct a biharmonic fill
    INPAINT_EPOCHS: int = 20
    INPAINT_LR: float = 1e-4      # pre-trained weights, batch of 16; the new embedding and head get 10x
    # synthetic damaged regions drawn per training slice (fixed by SEED); with ANATOMY_VARIANTS, on the slice
    # and its variants in turn
    INPAINT_COPIES: int = 10
    INPAINT_WARMUP_EPOCHS: int = 1

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            img_size=self.IMG_SIZE, patch_size=self.PATCH_SIZE, in_chans=self.IN_CHANS,
            embed_dim=self.EMBED_DIM, depth=self.DEPTH, num_heads=self.NUM_HEADS, mlp_ratio=self.MLP_RATIO,
            decoder_embed_dim=self.DECODER_EMBED_DIM, decoder_depth=self.DECODER_DEPTH,
            decoder_num_heads=self.DECODER_NUM_HEADS, mask_ratio=self.MASK_RATIO,
            lambda_fine=self.LAMBDA_FINE, lambda_coarse=self.LAMBDA_COARSE,
            foreground_threshold=self.FOREGROUND_THRESHOLD)

    def artifact(self, name: str, suffix: str = "") -> str:
        """The path of one of ARTIFACTS in OUTPUT_PATH; suffix goes before the extension (variants)."""
        stem, ext = os.path.splitext(ARTIFACTS[name])
        return os.path.join(self.OUTPUT_PATH, stem + suffix + ext)

    def effective_batch(self, world_size: int = 1, n_train: int = None) -> int:
        """Images per optimizer step; a batch larger than the training set is the training set."""
        batch = self.BATCH_SIZE * world_size
        return (batch if n_train is None else min(batch, n_train)) * self.ACCUM_STEPS

    def scaled_lr(self, lr: float, world_size: int = 1, n_train: int = None) -> float:
        # Linear scaling rule: every learning rate is stated for the spec's batch of 16.
        return lr * self.effective_batch(world_size, n_train) / 16

    def effective_lr(self, world_size: int = 1) -> float:
        return self.scaled_lr(self.LEARNING_RATE, world_size)

    def validate(self):
        self.model_config()  # architecture checks
        for name in ("N_EPOCHS", "BATCH_SIZE", "ACCUM_STEPS", "CLS_EPOCHS", "CHECKPOINT_EVERY", "INPAINT_EPOCHS",
                     "INPAINT_COPIES", "MAX_PIXELS"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bad setting {name}: must be >= 1, got {getattr(self, name)}")
        if self.CLS_IMG_SIZE < 0 or (self.CLS_IMG_SIZE and self.CLS_IMG_SIZE % self.PATCH_SIZE):
            raise ConfigError(f"bad setting CLS_IMG_SIZE: must be 0 or a multiple of PATCH_SIZE {self.PATCH_SIZE}, "
                              f"got {self.CLS_IMG_SIZE}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"bad setting {f.name}: must be a finite number, got {value}")
        for name in ("LEARNING_RATE", "WEIGHT_DECAY", "MIN_LR", "WARMUP_EPOCHS", "CLS_LR", "CLS_WARMUP_EPOCHS",

                     "CLS_WEIGHT_DECAY", "CLS_PATCH_WEIGHT", "INPAINT_LR", "INPAINT_WARMUP_EPOCHS", "ANATOMY_VARIANTS",
                     "ADAPT_STEPS", "ADAPT_LR"):
            if getattr(self, name) < 0:
                raise ConfigError(f"bad setting {name}: must be >= 0, got {getattr(self, name)}")
        if self.SLICE_AXIS not in (0, 1, 2):
            raise ConfigError(f"bad setting SLICE_AXIS: must be 0, 1 or 2, got {self.SLICE_AXIS}")
        if not 0.0 < self.LAYER_DECAY <= 1.0:
            raise ConfigError(f"bad setting LAYER_DECAY: must be in (0, 1], got {self.LAYER_DECAY}")
        if not 0.0 < self.CLS_THRESHOLD < 1.0:
            raise ConfigError(f"bad setting CLS_THRESHOLD: must be in (0, 1), got {self.CLS_THRESHOLD}")
        if not 0.0 < self.CLS_LABEL_FRACTION <= 1.0:
            raise ConfigError(f"bad setting CLS_LABEL_FRACTION: must be in (0, 1], got {self.CLS_LABEL_FRACTION}")
        if not 0.0 <= self.CLS_LESION_PASTE < 1.0:
            raise ConfigError(f"bad setting CLS_LESION_PASTE: must be in [0, 1), got {self.CLS_LESION_PASTE}")
        if not 0.0 <= self.CLS_PSEUDO_LABELS <= 1.0:
            raise ConfigError(f"bad setting CLS_PSEUDO_LABELS: must be in [0, 1], got {self.CLS_PSEUDO_LABELS}")
        if not 0.0 <= self.AUGMENT_WIDER <= 1.0:
            raise ConfigError(f"bad setting AUGMENT_WIDER: must be in [0, 1], got {self.AUGMENT_WIDER}")
        if not 0.0 < self.VAL_FRACTION < 1.0:
            raise ConfigError(f"bad setting VAL_FRACTION: must be in (0, 1), got {self.VAL_FRACTION}")
        if self.DEVICE not in ("auto", "cpu", "cuda") and not self.DEVICE.startswith("cuda:"):
            raise ConfigError(f"bad setting DEVICE: expected auto, cpu, cuda or cuda:N, got {self.DEVICE!r}")
        try:
            if re.compile(self.SUBJECT_PATTERN).groups < 1:
                raise ConfigError("bad setting SUBJECT_PATTERN: needs one capture group (the subject id)")
        except re.error as e:
            raise ConfigError(f"bad setting SUBJECT_PATTERN: {e}") from None
        return self


# Presets change defaults only; the environment and flags still win over them.
PRESETS = {
    # About 3 M parameters on 128 x 128 slices (64 patches): the whole pipeline in minutes on a 2-core CPU.
    # At 224 the same model needed 400 epochs (15 min here) to beat the biharmonic fill by 1 dB, and 100
    # epochs gave +0.15 dB; at 128, 200 epochs gave +2.37 dB (larger holes relative to the anatomy make
    # the learned prior count for more; measured, docs/RESULTS.md). The classifier's patch-evidence head
    # learns slowly from the pre-trained encoder: 80 epochs at 4x the default rate, milder layer decay (100
    # gave the same AUROC and pointing game over three seeds, 60 a worse pointing game: docs/METHODS.md).
    # 200 pre-training epochs (the default; against 160, over three training seeds: +0.11 to +0.21 dB on the
    # transfer set and +0.19 to +0.27 on validation, fill by fill; 180 halfway), paid for by 3 inpainting
    # epochs instead of 4 (the same gain over biharmonic within the seeds' spread): docs/METHODS.md.
    # AMP: bf16 where the CPU has it and it measures faster than fp32 (hardware.resolve_amp), else fp32.
    "demo": dict(IMG_SIZE=128, EMBED_DIM=192, DEPTH=6, NUM_HEADS=3, DECODER_EMBED_DIM=128, DECODER_DEPTH=2,
                 DECODER_NUM_HEADS=4, BATCH_SIZE=16, LEARNING_RATE=1e-3, WARMUP_EPOCHS=10,
                 MIN_LR=1e-5, AMP=True, CLS_EPOCHS=80, CLS_LR=2e-3, LAYER_DECAY=0.9, CHECKPOINT_EVERY=10,
                 INPAINT_EPOCHS=3, TRANSFER_PATH="builtin", ANATOMY_VARIANTS=4, ADAPT_STEPS=10),
    # For tests and smoke runs: seconds, not minutes.
    "tiny": dict(IMG_SIZE=64, EMBED_DIM=32, DEPTH=2, NUM_HEADS=2, DECODER_EMBED_DIM=32, DECODER_DEPTH=1,
                 DECODER_NUM_HEADS=2, N_EPOCHS=1, BATCH_SIZE=4, WARMUP_EPOCHS=0, CLS_EPOCHS=2,
                 CLS_WARMUP_EPOCHS=0, INPAINT_EPOCHS=1, INPAINT_COPIES=2),
}

# Environment names that are not MIRAM_<FIELD>, kept because the spec documents them.
ENV_ALIASES = {"MIRAM_DATA_PATH": "DATASET_PATH", "MIRAM_OUTPUT_PATH": "OUTPUT_PATH"}
ENV_NON_SETTINGS = {"MIRAM_PRESET"}


def _coerce(name, kind, raw):
    raw = raw.strip() if isinstance(raw, str) else raw
    try:
        if kind is bool:
            low = str(raw).lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(f"bad setting {name}: expected {kind.__name__}, got {raw!r}") from None


def _field_types():
    return {f.name: {"int": int, "float": float, "bool": bool, "str": str}.get(f.type, f.type)
            if isinstance(f.type, str) else f.type for f in fields(Config)}


def flag_name(name):
    return "--" + name.lower().replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, skip=()):
    """Adds --preset and one --<name> flag per setting (except those in skip, whose flag the script
    defines with its own meaning); values are checked in load_config."""
    group = parser.add_argument_group("settings (override config.py and MIRAM_* environment variables)")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="a named set of defaults (env: MIRAM_PRESET)")
    for f in fields(Config):
        if f.name in skip:
            continue
        group.add_argument(flag_name(f.name), dest=f.name, default=None, metavar="V",
                           help=f"{f.name} (default {f.default!r})")
    return parser


def settings_flags(args) -> list:
    """The settings given on a command line parsed with add_config_args, as flags to pass on to a phase."""
    flags = ["--preset", args.preset] if args.preset else []
    for name, value in vars(args).items():
        if name.isupper() and value is not None:
            flags += [flag_name(name), value]
    return flags


def load_config(args=None, environ=None) -> Config:
    """Resolves defaults -> preset -> environment -> flags, and validates the result."""
    environ = os.environ if environ is None else environ
    types = _field_types()
    values = {}
    preset = getattr(args, "preset", None) or environ.get("MIRAM_PRESET") or None
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"bad setting MIRAM_PRESET: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        values.update(PRESETS[preset])
    for key, raw in environ.items():
        if not key.startswith("MIRAM_") or key in ENV_NON_SETTINGS:
            continue
        name = ENV_ALIASES.get(key, key[len("MIRAM_"):])
        if name not in types:
            raise ConfigError(f"unknown setting {key} in the environment (known: MIRAM_<NAME> for the names in config.py)")
        values[name] = _coerce(key, types[name], raw)
    for name in types:
        raw = getattr(args, name, None) if args is not None else None
        if raw is not None:
            values[name] = _coerce(flag_name(name), types[name], raw)
    cfg = Config(**values)
    cfg.preset = preset
    return cfg.validate()


TMP_PREFIX = ".tmp-"  # temporary files written beside their target; a killed run's are removed at the next start


def temp_beside(path, suffix=""):
    """(fd, name) of a new temporary file in path's folder (created if needed), with the mode open() would
    give it under the umask (mkstemp makes 0600): write it, then os.replace it onto path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def save_json(path, obj, **dump_args):
    """Writes obj as JSON atomically: a failure leaves the previous file, never a half-written one."""
    fd, tmp = temp_beside(path, ".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, **dump_args)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def cpu_name(cpuinfo: str = None) -> str:
    """The CPU for every figure a run reports: its model name, family and model, and the widest vector unit
    the kernels can use. A model name alone says "AMD EPYC" for both a Zen 3 (AVX2, family 25) and a Zen 5
    (AVX-512 BF16, family 26), whose speeds differ about twofold. cpuinfo: /proc/cpuinfo's text (Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if not line.strip():
            break  # the first processor describes them all
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = next((label for flag, label in (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                             ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    detail = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields and "model" in fields else []
    detail += [vector] if vector else []
    return f"{name} ({', '.join(detail)})" if detail else name


def run_info() -> dict:
    """Where a figure came from: the command, the CPU and the time, stored beside it in each JSON artifact."""
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MIRAM_")]
    return {"command": " ".join(settings + [os.path.basename(sys.executable)] + sys.argv),
            "cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def describe(cfg: Config, world_size: int = 1) -> str:
    """The resolved configuration, printed once by each script."""
    items = [f"{f.name}={getattr(cfg, f.name)!r}" for f in fields(Config)]
    derived = (f"preset={getattr(cfg, 'preset', None)!r} effective_batch={cfg.effective_batch(world_size)} "
               f"effective_lr={cfg.effective_lr(world_size):.3g}")
    return "config: " + " ".join(items) + "\n        " + derived


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


INTERRUPTED_TRAINING = "interrupted: the last complete checkpoint is kept; run the same command again to resume"


def run_cli(main, argv=None, interrupted=INTERRUPTED_TRAINING):
    """Runs a script's main; a MiramError becomes one line on stderr and exit status 1, Ctrl-C the line
    `interrupted` and exit status 130, and warnings (skipped files) are one line each."""
    warnings.formatwarning = _one_line_warning
    try:
        return main(argv)
    except MiramError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)

"""Every setting of MIRAM, each defined once, and the only reader of MIRAM_* environment variables.

A setting is a field of `Config` below: its default, its type, what it means and the scripts that read it.
Precedence, lowest to highest: the default -> a preset (`MIRAM_PRESET` / `--preset`) -> `MIRAM_<NAME>`
environment variables -> a script's `--<name>` flags. A script offers the flags of the settings it reads
(`python train.py --help` lists them with their meaning), resolves what a checkpoint fixes (the architecture)
before it starts, and prints the resolved configuration once; the configuration is frozen after that.
"""
import argparse
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields

# Option A of the spec: point DRIVE_PATH at the folder holding mri_project/Brain_MRI (or set MIRAM_DATA_PATH).
# Left empty, every phase uses the embedded demo data.
DRIVE_PATH = ""

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
    "superres_checkpoint": "superres_checkpoint.pth",
    "superres": "best_miram_superres.pth",       # train.py --superres: 2x in-plane resolution
    "superres_log": "superres_log.jsonl",
    "superres_metrics": "superres_metrics.json",  # held-out slices, inside the head, against bicubic and Lanczos
    "superres_sample": "miram_superres_sample.png",
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
    "superres_onnx": "miram_superres.onnx",
    "deploy_benchmark": "deploy_benchmark.json",
    "demo_summary": "demo_summary.json",
    "stage_times": "stage_times.json",           # a phase's named stages, timed: stage_times_<phase>.json (demo.py)
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
# the packaged real heads of `makedata.py --transfer` (TRANSFER_PATH=builtin), built on first use
BUILTIN_TRANSFER_PATH = os.path.join("data", "transfer", "Brain_MRI")


def margin_key(method):
    """The key of a MIRAM fill's margin over the best classical fill in eval_metrics.json (evaluate.py writes
    it; the demo summary and the report read it): "miram_adapted_seamless" -> "margin_db_adapted_seamless"."""
    return "margin_db" + method[len("miram"):]


class MiramError(Exception):
    """An error the user can cause and fix (bad data, bad setting, missing checkpoint).

    Scripts print its message as one line and exit non-zero, without a traceback.
    """


class ConfigError(MiramError):
    pass


# ---- the settings -------------------------------------------------------------------------------------

# The phase scripts, as a setting names the ones that read it (demo.py passes every setting on to them).
SCRIPTS = ("train", "evaluate", "classify", "enhance", "export_deploy")
DATA = ("train", "evaluate", "classify", "export_deploy")  # the scripts that load the data set
TRAINING = ("train", "classify")                           # the scripts that run the training engine


def setting(default, meaning, read_by):
    """A field of Config: its default, what it means (the flag's help) and the scripts that read it."""
    return field(default=default, metadata={"help": meaning, "read_by": tuple(read_by)})


@dataclass(frozen=True)
class Config:
    # ---- paths
    DATASET_PATH: str = setting(os.path.join(DRIVE_PATH, "mri_project", "Brain_MRI") if DRIVE_PATH else "",
                                "the data folder (HR/ + MASK/, a flat folder, NIfTI volumes or Kaggle LGG); "
                                "empty: the embedded demo data (env also MIRAM_DATA_PATH)", DATA)
    OUTPUT_PATH: str = setting("outputs", "where every phase writes its artifacts and reads the earlier "
                               "phases' ones", SCRIPTS)
    DEMO_DATA_PATH: str = setting(os.path.join("data", "demo", "Brain_MRI"),
                                  "where the demo data is built on first use", DATA)
    TRANSFER_PATH: str = setting("", "a second set every quality figure is also reported on, never trained "
                                 "on: a folder in any layout, 'builtin' for real heads from installed packages, "
                                 "empty for none", ("train", "evaluate", "classify"))
    # ---- the architecture (a checkpoint records it; later phases rebuild the model from there)
    IMG_SIZE: int = setting(224, "input size in pixels; slices are padded to a square and resized to it",
                            TRAINING)
    PATCH_SIZE: int = setting(16, "patch side in pixels (even: the coarse scale halves it)", TRAINING)
    IN_CHANS: int = setting(1, "image channels (grey MRI: 1)", TRAINING)
    EMBED_DIM: int = setting(384, "encoder width", TRAINING)
    DEPTH: int = setting(12, "encoder transformer blocks", TRAINING)
    NUM_HEADS: int = setting(6, "encoder attention heads", TRAINING)
    MLP_RATIO: float = setting(4.0, "transformer MLP width over the embedding width", TRAINING)
    DECODER_EMBED_DIM: int = setting(256, "decoder width", TRAINING)
    DECODER_DEPTH: int = setting(4, "decoder transformer blocks", TRAINING)
    DECODER_NUM_HEADS: int = setting(8, "decoder attention heads", TRAINING)
    MASK_RATIO: float = setting(0.75, "share of the patches hidden in pre-training", TRAINING)
    LAMBDA_FINE: float = setting(1.0, "weight of the fine-scale (full-size) reconstruction loss", TRAINING)
    LAMBDA_COARSE: float = setting(0.5, "weight of the coarse-scale (half-size) reconstruction loss", TRAINING)
    FOREGROUND_THRESHOLD: float = setting(0.01, "the classifier encodes only patches whose mean intensity (of the "
                                          "[0, 1]-scaled slice) exceeds this; negative: every patch", TRAINING)
    # ---- pre-training
    N_EPOCHS: int = setting(200, "pre-training epochs", ("train",))
    BATCH_SIZE: int = setting(16, "images per step and process (lower it when memory runs out)", TRAINING)
    LEARNING_RATE: float = setting(1.5e-4, "AdamW rate for a batch of 16, scaled linearly with the global batch",
                                   ("train",))
    WEIGHT_DECAY: float = setting(0.05, "AdamW weight decay in pre-training", ("train",))
    WARMUP_EPOCHS: int = setting(10, "epochs of linear warm-up before the cosine decay", ("train",))
    MIN_LR: float = setting(0.0, "the rate the cosine decay ends at", ("train",))
    ACCUM_STEPS: int = setting(1, "batches whose gradients add up to one optimizer step", TRAINING)
    CHECKPOINT_EVERY: int = setting(1, "epochs between resumable checkpoints (always after the last)", TRAINING)
    AUGMENT: bool = setting(True, "random rotation, scale, shift, flip and gamma of each training batch", TRAINING)
    AUGMENT_WIDER: float = setting(0.5, "share of pre-training slices framed wider (a smaller head, off centre, as "
                                   "other scanners frame it)", ("train",))
    ANATOMY_VARIANTS: int = setting(0, "other plausible brains drawn once per pre-training slice (elastic, "
                                    "T2-like contrast, bias field, resolution, field of view, noise); 0: none",
                                    ("train",))
    AMP: bool = setting(False, "bf16 autocast where the device computes bf16 natively and it measures faster; "
                        "otherwise fp32", ("train", "evaluate", "classify"))
    MATMUL: str = setting("auto", "the linear layers' fp32 CPU kernel: auto (the faster, timed once per boot), "
                          "default (F.linear) or onednn", TRAINING)
    DEVICE: str = setting("auto", "auto, cpu, cuda or cuda:N", ("train", "evaluate", "classify", "enhance"))
    SEED: int = setting(0, "the training seed (weights, batches, augmentation)", TRAINING)
    # ---- data
    LAYOUT: str = setting("auto", "how DATASET_PATH is laid out: auto (the one layout that fits; a folder that "
                          "fits several is refused), spec (HR/ + MASK/ or flat), nifti (NIfTI or NRRD volumes), "
                          "kaggle_lgg or classes (<root>/<class>/ images)", DATA)
    VAL_FRACTION: float = setting(0.2, "share of the subjects held out for validation", DATA)
    SPLIT_SEED: int = setting(0, "the subject split's seed, apart from SEED: training seeds vary while "
                              "validation stays held out", DATA)
    VAL_SUBJECTS: str = setting("", "subjects held out for validation, comma-separated, in place of a draw",
                                DATA)
    TRAIN_EXCLUDE: str = setting("", "a text file of image names (one a line, as dataset.py --inspect names them) "
                                 "left out of training; validation keeps them", DATA)
    SUBJECT_PATTERN: str = setting(r"^(.+?)(?:_\d+)?$", "regex on a file's stem; group 1 is the subject id "
                                   "(default: the name without a trailing _<number>)", DATA)
    DUPLICATE_CORRELATION: float = setting(0.98, "near-identical images (32 x 32 thumbnails correlating at or above "
                                           "this, a left-right flip included) are one subject, kept on one side of "
                                           "the split, where file names give no subjects (class folders, or one "
                                           "file a subject); 0: never", DATA)
    SLICE_AXIS: int = setting(2, "NIfTI volumes, turned to RAS, are cut along this axis (0 sagittal, 1 coronal, "
                              "2 axial)", SCRIPTS)
    MAX_PIXELS: int = setting(2 ** 26, "values a file may decode to, checked from its header before decoding",
                              SCRIPTS)
    EVAL_SEED: int = setting(1234, "seed of the masks used for validation and evaluation",
                             ("train", "evaluate", "export_deploy"))
    # ---- evaluation
    ADAPT_STEPS: int = setting(0, "also fill each image with a copy of the MAE fine-tuned for this many steps "
                               "on its visible patches; 0: off", ("evaluate",))
    ADAPT_LR: float = setting(3e-5, "the rate of those steps", ("evaluate",))
    SEAMLESS_FILL: bool = setting(True, "also report each MIRAM fill blended in by seamless cloning (Poisson)",
                                  ("evaluate",))
    # ---- tumor classification
    CLS_EPOCHS: int = setting(30, "classifier epochs", ("classify",))
    CLS_LR: float = setting(5e-4, "the classifier head's rate for a batch of 16; encoder blocks get less "
                            "(LAYER_DECAY)", ("classify",))
    LAYER_DECAY: float = setting(0.75, "block i of D learns at CLS_LR * LAYER_DECAY ** (D - i)", ("classify",))
    CLS_WARMUP_EPOCHS: int = setting(3, "classifier warm-up epochs", ("classify",))
    CLS_WEIGHT_DECAY: float = setting(0.05, "classifier weight decay", ("classify",))
    CLS_THRESHOLD: float = setting(0.5, "p(tumor) at or above which a slice is called a tumor (the loss is "
                                   "class-balanced)", ("classify",))
    CLS_PATCH_WEIGHT: float = setting(3.0, "weight of the patch labels (from the masks) beside the slice label; "
                                      "0: slice labels only", ("classify",))
    CLS_LABEL_FRACTION: float = setting(1.0, "share of the labelled training subjects the classifier learns from",
                                        ("classify",))
    CLS_IMG_SIZE: int = setting(0, "the classifier's input size (0: the encoder's); another size spreads the "
                                "encoder's positions over the range it learned", ("classify",))
    CLS_CONV_EVIDENCE: bool = setting(False, "a small CNN beside the encoder adds its cell scores to each "
                                      "patch's evidence (small lesions)", ("classify",))
    CLS_CONV_CELL: int = setting(8, "that CNN's cells, pixels a side: 8, 4 or 2 (finer maps, more compute)", ("classify",))
    # ---- the inpainting fine-tune (train.py --inpaint)
    INPAINT_EPOCHS: int = setting(20, "epochs of the inpainting fine-tune", ("train",))
    INPAINT_LR: float = setting(1e-4, "its rate for a batch of 16 (the new embedding and head get 10x)",
                                ("train",))
    INPAINT_COPIES: int = setting(10, "synthetic damaged regions drawn per training slice", ("train",))
    INPAINT_WARMUP_EPOCHS: int = setting(1, "its warm-up epochs", ("train",))
    # ---- the super-resolution fine-tune (train.py --superres)
    SUPERRES_EPOCHS: int = setting(20, "epochs of the super-resolution fine-tune", ("train",))
    SUPERRES_LR: float = setting(1e-4, "its rate for a batch of 16 (the new head gets 10x)", ("train",))
    SUPERRES_CROPS: int = setting(4, "IMG_SIZE crops a training slice at its own scale, each degraded once", ("train",))
    SUPERRES_NOISE: float = setting(0.0, "Rician noise on its inputs: sigma drawn up to this share of the range", ("train",))
    INPAINT_HOLES: str = setting("synthetic", "the regions it learns to fill: synthetic (blocks, stripes, blobs) or "
                                 "lesions (the training masks' lesion shapes, placed in clear tissue)", ("train",))
    preset: str = None  # not a setting: the preset these values came from, for the record

    def model_config(self) -> "ModelConfig":
        return ModelConfig(**{f.name: getattr(self, f.name.upper()) for f in fields(ModelConfig)
                              if f.name.upper() in ARCHITECTURE})

    def adopt(self, model_cfg: "ModelConfig", **more) -> "Config":
        """This configuration with a checkpoint's architecture (and `more` settings) in place of its own:
        what a phase that starts from a checkpoint resolves once, before it prints or runs anything."""
        return dataclasses.replace(self, **{**{name: getattr(model_cfg, name.lower()) for name in ARCHITECTURE},
                                            **more})

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
        for name in ("OUTPUT_PATH", "DEMO_DATA_PATH"):
            if not getattr(self, name).strip():
                raise ConfigError(f"bad setting {name}: empty; name a folder (default {SETTINGS[name].default!r})")
        for name in ("N_EPOCHS", "BATCH_SIZE", "ACCUM_STEPS", "CLS_EPOCHS", "CHECKPOINT_EVERY", "INPAINT_EPOCHS",
                     "INPAINT_COPIES", "MAX_PIXELS", "SUPERRES_EPOCHS", "SUPERRES_CROPS"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bad setting {name}: must be >= 1, got {getattr(self, name)}")
        if self.CLS_IMG_SIZE < 0 or (self.CLS_IMG_SIZE and self.CLS_IMG_SIZE % self.PATCH_SIZE):
            raise ConfigError(f"bad setting CLS_IMG_SIZE: must be 0 or a multiple of PATCH_SIZE {self.PATCH_SIZE}, got {self.CLS_IMG_SIZE}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"bad setting {f.name}: must be a finite number, got {value}")
        for name in ("LEARNING_RATE", "WEIGHT_DECAY", "MIN_LR", "WARMUP_EPOCHS", "CLS_LR", "CLS_WARMUP_EPOCHS",
                     "CLS_WEIGHT_DECAY", "CLS_PATCH_WEIGHT", "INPAINT_LR", "INPAINT_WARMUP_EPOCHS", "SUPERRES_LR", "SUPERRES_NOISE",
                     "ANATOMY_VARIANTS", "ADAPT_STEPS", "ADAPT_LR"):
            if getattr(self, name) < 0:
                raise ConfigError(f"bad setting {name}: must be >= 0, got {getattr(self, name)}")
        for name, low, high, closed in (("LAYER_DECAY", 0.0, 1.0, "(0, 1]"), ("CLS_THRESHOLD", 0.0, 1.0, "(0, 1)"),
                                        ("CLS_LABEL_FRACTION", 0.0, 1.0, "(0, 1]"), ("VAL_FRACTION", 0.0, 1.0, "(0, 1)"),
                                        ("AUGMENT_WIDER", 0.0, 1.0, "[0, 1]")):
            value = getattr(self, name)
            inside = ((low <= value if closed[0] == "[" else low < value)
                      and (value <= high if closed[-1] == "]" else value < high))
            if not inside:
                raise ConfigError(f"bad setting {name}: must be in {closed}, got {value}")
        if self.SLICE_AXIS not in (0, 1, 2):
            raise ConfigError(f"bad setting SLICE_AXIS: must be 0, 1 or 2, got {self.SLICE_AXIS}")
        if self.INPAINT_HOLES not in ("synthetic", "lesions"):
            raise ConfigError(f"bad setting INPAINT_HOLES: expected synthetic or lesions, got {self.INPAINT_HOLES!r}")
        if self.MATMUL not in ("auto", "default", "onednn"):
            raise ConfigError(f"bad setting MATMUL: expected auto, default or onednn, got {self.MATMUL!r}")
        if self.DEVICE not in ("auto", "cpu", "cuda") and not self.DEVICE.startswith("cuda:"):
            raise ConfigError(f"bad setting DEVICE: expected auto, cpu, cuda or cuda:N, got {self.DEVICE!r}")
        try:
            if re.compile(self.SUBJECT_PATTERN).groups < 1:
                raise ConfigError("bad setting SUBJECT_PATTERN: needs one capture group (the subject id)")
        except re.error as e:
            raise ConfigError(f"bad setting SUBJECT_PATTERN: {e}") from None
        return self


SETTINGS = {f.name: f for f in fields(Config) if "help" in f.metadata}
MAX_PIXELS = Config.MAX_PIXELS  # the default budget, for readers called without a configuration


@dataclass
class ModelConfig:
    """The architecture: everything needed to rebuild a model from a checkpoint. Each field but the last four
    is the setting of its name upper-cased, with that setting's default."""
    img_size: int = Config.IMG_SIZE
    patch_size: int = Config.PATCH_SIZE
    in_chans: int = Config.IN_CHANS
    embed_dim: int = Config.EMBED_DIM
    depth: int = Config.DEPTH
    num_heads: int = Config.NUM_HEADS
    mlp_ratio: float = Config.MLP_RATIO
    decoder_embed_dim: int = Config.DECODER_EMBED_DIM
    decoder_depth: int = Config.DECODER_DEPTH
    decoder_num_heads: int = Config.DECODER_NUM_HEADS
    mask_ratio: float = Config.MASK_RATIO
    lambda_fine: float = Config.LAMBDA_FINE
    lambda_coarse: float = Config.LAMBDA_COARSE
    foreground_threshold: float = Config.FOREGROUND_THRESHOLD  # the classifier's; the MAE ignores it
    # The patch grid the fixed sin-cos positions span (0: this model's own). An encoder pre-trained on an 8x8
    # grid and read at 14x14 keeps positions inside the range it learned, at finer steps.
    pos_grid: int = 0
    # The classifier's convolutional evidence branch (CLS_CONV_EVIDENCE) and its cells (CLS_CONV_CELL); the MAE
    # ignores them.
    conv_evidence: bool = False
    conv_cell: int = 8
    # The classifier's classes: 2 (tumor-free, tumor) or one a class folder (the data decides); the MAE ignores it.
    num_classes: int = 2
    # MIRAM feature channels the super-resolver's convolutions read (0: the small CNN alone, train.py --cnn).
    superres_features: int = 8

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


# the settings a checkpoint fixes
ARCHITECTURE = tuple(f.name.upper() for f in fields(ModelConfig) if f.name.upper() in SETTINGS)

# A model the settings imply is refused above this many parameters: a checkpoint's stored settings decide
# what is allocated before its weights are read (the spec's model has 25 million).
MAX_PARAMETERS = 2_000_000_000


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible at a mask ratio: int(L * (1 - ratio)), as MAE keeps them."""
    return int(num_patches * (1 - mask_ratio))


def parameter_count(m) -> int:
    """The parameters of the MAE (encoder and decoder) a ModelConfig implies, counted from its sizes."""
    def blocks(dim, depth):
        hidden = int(dim * m.mlp_ratio)
        return depth * (4 * dim * dim + 4 * dim + 2 * dim * hidden + hidden + dim + 4 * dim)
    D, d, values = m.embed_dim, m.decoder_embed_dim, m.patch_size ** 2 * m.in_chans
    heads = values + values // 4  # the fine and the coarse scale
    return ((values + 4) * D + blocks(D, m.depth) + (D + 4) * d + blocks(d, m.decoder_depth) + (d + 1) * heads)


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
    need(isinstance(m.num_classes, int) and not isinstance(m.num_classes, bool) and 2 <= m.num_classes <= 1000,
         "num_classes", f"must be an integer in 2..1000, got {m.num_classes!r}")
    need(isinstance(m.conv_evidence, bool), "CLS_CONV_EVIDENCE", f"must be true or false, got {m.conv_evidence!r}")
    need(m.conv_cell in (2, 4, 8), "CLS_CONV_CELL", f"must be 8, 4 or 2, got {m.conv_cell!r}")
    need(not m.conv_evidence or m.patch_size % m.conv_cell == 0, "CLS_CONV_EVIDENCE",
         f"needs PATCH_SIZE a multiple of {m.conv_cell} (the branch scores {m.conv_cell}-pixel cells), got {m.patch_size}")
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
    count = parameter_count(m)
    need(count <= MAX_PARAMETERS, "EMBED_DIM",
         f"these sizes make a model of {count / 1e9:.1f} G parameters (at most {MAX_PARAMETERS / 1e9:.0f} G)")


# Presets change defaults only; the environment and flags still win over them.
PRESETS = {
    # About 3 M parameters on 128 x 128 slices (64 patches): the whole pipeline in minutes on a 2-core CPU
    # (docs/METHODS.md says why each value).
    "demo": dict(IMG_SIZE=128, EMBED_DIM=192, DEPTH=6, NUM_HEADS=3, DECODER_EMBED_DIM=128, DECODER_DEPTH=2,
                 DECODER_NUM_HEADS=4, BATCH_SIZE=16, LEARNING_RATE=1e-3, WARMUP_EPOCHS=10,
                 MIN_LR=1e-5, AMP=True, CLS_EPOCHS=80, CLS_LR=2e-3, LAYER_DECAY=0.9, CHECKPOINT_EVERY=10,
                 INPAINT_EPOCHS=3, TRANSFER_PATH="builtin", ANATOMY_VARIANTS=4, ADAPT_STEPS=10, SUPERRES_EPOCHS=6),
    # For tests and smoke runs: seconds, not minutes.
    "tiny": dict(IMG_SIZE=64, EMBED_DIM=32, DEPTH=2, NUM_HEADS=2, DECODER_EMBED_DIM=32, DECODER_DEPTH=1,
                 DECODER_NUM_HEADS=2, N_EPOCHS=1, BATCH_SIZE=4, WARMUP_EPOCHS=0, CLS_EPOCHS=2,
                 CLS_WARMUP_EPOCHS=0, INPAINT_EPOCHS=1, INPAINT_COPIES=2, SUPERRES_EPOCHS=1, SUPERRES_CROPS=1),
}

# Environment names that are not MIRAM_<FIELD>, kept because the spec documents them.
ENV_ALIASES = {"MIRAM_DATA_PATH": "DATASET_PATH", "MIRAM_OUTPUT_PATH": "OUTPUT_PATH"}
ENV_NON_SETTINGS = {"MIRAM_PRESET"}


def _coerce(name, kind, raw):
    raw = raw.strip() if isinstance(raw, str) else raw
    try:
        if kind is bool:  # a word that is neither raises KeyError
            return {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                    "off": False}[str(raw).lower()]
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except (ValueError, KeyError):
        raise ConfigError(f"bad setting {name}: expected {kind.__name__}, got {raw!r}") from None


def flag_name(name):
    return "--" + name.lower().replace("_", "-")


def at_least(minimum):
    """An argparse type: an integer, refused below minimum ("--n-viz -3" is a mistake, not a request)."""
    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return integer


def offered(script=None):
    """The settings a script offers as flags: those it reads (script None: every setting)."""
    return [name for name, f in SETTINGS.items() if script is None or script in f.metadata["read_by"]]


def add_config_args(parser: argparse.ArgumentParser, script=None, skip=()):
    """Adds --preset and a --<name> flag for each setting the script reads (except those in skip, whose flag
    the script defines with its own meaning), with its meaning as help; values are checked in load_config."""
    group = parser.add_argument_group("settings (override config.py, a preset and MIRAM_<NAME> environment "
                                      "variables)")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS),
                       help="a named set of defaults (env MIRAM_PRESET)")
    for name in offered(script):
        if name in skip:
            continue
        f = SETTINGS[name]
        group.add_argument(flag_name(name), dest=name, default=None, metavar=f.type.upper() if isinstance(f.type, str)
                           else f.type.__name__.upper(), help=f"{f.metadata['help']} (default {f.default!r})")
    return parser


def settings_env(args) -> dict:
    """The preset and settings given on a command line parsed with add_config_args, as MIRAM_* environment
    variables: what a script passes on to the phases it runs (each reads the ones it needs)."""
    env = {"MIRAM_PRESET": args.preset} if getattr(args, "preset", None) else {}
    for name, value in vars(args).items():
        if name in SETTINGS and value is not None:
            env["MIRAM_" + name] = str(value)
    return env


def settings_flags(args) -> list:
    """The preset and settings given on a command line parsed with add_config_args, as flags to pass on to a
    script that offers the same settings."""
    flags = ["--preset", args.preset] if getattr(args, "preset", None) else []
    for name, value in vars(args).items():
        if name in SETTINGS and value is not None:
            flags += [flag_name(name), value]
    return flags


def load_config(args=None, environ=None) -> Config:
    """Resolves defaults -> preset -> environment -> flags, and validates the result."""
    environ = os.environ if environ is None else environ
    types = {name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] if isinstance(f.type, str)
             else f.type for name, f in SETTINGS.items()}
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
    return Config(**values, preset=preset).validate()


def describe(cfg: Config, world_size: int = 1, script=None) -> str:
    """The resolved configuration, printed once by each script: the settings it reads."""
    items = [f"{name}={getattr(cfg, name)!r}" for name in offered(script)]
    derived = (f"preset={cfg.preset!r} effective_batch={cfg.effective_batch(world_size)} "
               f"effective_lr={cfg.effective_lr(world_size):.3g}")
    return "config: " + " ".join(items) + "\n        " + derived

"""The tumor classifier's training task, losses, metrics and heatmaps; classify.py runs them.

A slice's label: its mask has a non-zero pixel, or its class folder (two classes or more). The classifier
(models.TumorClassifier) is the pre-trained encoder with a patch-evidence head: each encoded patch gets a
score, the slice's logit pools them, and the patches' weights in that pool are the default heatmap, scored
against the true outline where there is one (pointing game, mass inside the tumor). Two classes train on a
class-balanced binary cross-entropy, more on a class-balanced cross-entropy over their softmax.
"""
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from augment import local_images
from config import MiramError
from engine import Task, layer_decay
from hardware import autocast
from heatmaps import cls_maps, evidence_map
from models import TumorClassifier, class_probabilities, shown_logit
from runtime import (DEFAULT_HEATMAP, binary_metrics, class_columns, class_metrics, localization, tumor_probability,
                     upsample_heatmaps)

VARIANTS = ("finetune", "linear_probe", "from_scratch")


def suffix_of(variant):
    """What a variant's artifacts carry after their name: best_tumor_classifier_linear_probe.pth."""
    return "" if variant == "finetune" else "_" + variant


# ---- the model -----------------------------------------------------------------------------------------

def build_classifier(cfg, variant, mae_path=None, mae_state=None, num_classes=2):
    """-> the classifier of a variant: the pre-trained encoder of mae_state (finetune, linear_probe) or the
    same architecture from random weights (from_scratch). It reads CLS_IMG_SIZE pixels (0: the encoder's
    own size); read at another size, the encoder's positions keep the range it was pre-trained on."""
    from checkpoint import model_config_from
    if variant == "from_scratch":
        return TumorClassifier(dataclasses.replace(cfg.model_config(), img_size=cfg.CLS_IMG_SIZE or cfg.IMG_SIZE,
                                                   conv_evidence=cfg.CLS_CONV_EVIDENCE, conv_cell=cfg.CLS_CONV_CELL,
                                                   num_classes=num_classes))
    mae_cfg = model_config_from(mae_state, mae_path)
    size = cfg.CLS_IMG_SIZE or mae_cfg.img_size
    if size % mae_cfg.patch_size:
        raise MiramError(f"CLS_IMG_SIZE {size} is not a multiple of {mae_path}'s patch size {mae_cfg.patch_size}")
    pos_grid = mae_cfg.pos_grid
    if size != mae_cfg.img_size:
        pos_grid = pos_grid or mae_cfg.img_size // mae_cfg.patch_size
    model = TumorClassifier(dataclasses.replace(mae_cfg, foreground_threshold=cfg.FOREGROUND_THRESHOLD, img_size=size,
                                                pos_grid=pos_grid, conv_evidence=cfg.CLS_CONV_EVIDENCE,
                                                conv_cell=cfg.CLS_CONV_CELL,
                                                num_classes=num_classes))
    encoder_state = {k[len("encoder."):]: v for k, v in mae_state["model"].items() if k.startswith("encoder.")}
    model.encoder.load_state_dict(encoder_state)  # strict: every encoder key must match
    return model


# ---- inference with heatmaps ---------------------------------------------------------------------------

def predict_all(model, images, device, amp, batch=32, with_attention=False):
    """-> probabilities numpy ((N,) of class 1 with two classes, (N, K) with more), and with_attention:
    {"evidence"|"last_block"|"rollout"|"relevance":
    (N, S, S) heatmaps} (relevance needs the gradient: one backward pass per batch); with_attention="evidence":
    the default map alone, from the forward pass."""
    model.eval()
    probs, maps = [], {}
    for s in range(0, len(images), batch):
        x = images[s:s + batch].to(device)
        with torch.set_grad_enabled(with_attention is True), autocast(device, amp):
            if with_attention:
                logits, atts, keep, valid, scores, where = model.forward_with_attention(
                    x, "all" if with_attention is True else None)
                found = {"evidence": evidence_map(scores.detach(), where, valid, model.map_grid)}
                if with_attention is True:
                    # a slice's logit depends on its own tokens only: the sum's gradient is each one's own
                    grads = torch.autograd.grad(shown_logit(logits).float().sum(), atts)
                    with torch.no_grad():
                        found.update(cls_maps(atts, keep, valid, model.encoder.grid, grads))
                for k, v in found.items():
                    maps.setdefault(k, []).append(v.float().cpu().numpy())
            else:
                logits = model(x)
        probs.append(class_probabilities(logits.detach().float()).cpu().numpy())
    probs = np.concatenate(probs)
    if not with_attention:
        return probs
    size = images.shape[-1]
    return probs, {k: upsample_heatmaps(np.concatenate(v), size) for k, v in maps.items()}


# ---- training ------------------------------------------------------------------------------------------

def balanced_log_loss(probs, labels):
    """The mean log loss of each class, averaged over the classes present (as the training loss weights
    them). probs: (N,) of class 1 of two, or (N, K)."""
    probs = class_columns(probs)
    labels = np.asarray(labels).astype(int)
    truth = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(np.mean([-np.log(truth[labels == k]).mean() for k in np.unique(labels)]))


def patch_supervision(scores, masks, keep, valid, patch, min_share=0.1, full_share=0.5):
    """Binary cross-entropy of each encoded patch's score against its own soft label: its tumor share over
    full_share, capped at 1 (a patch half tumor or more is all tumor), 0 under min_share, and 1 for the
    slice's largest share (a lesion smaller than min_share of a patch, or split between patches, still
    marks the patch that holds most of it); tumor and tumor-free weighted equally (a tumor covers a few
    patches of a slice). The soft label ranks a patch by how much tumor it holds, so the map's peak lands on
    the tumor rather than on a patch that grazes it (docs/METHODS.md).
    scores (B, K), masks (B, 1, S, S) float, keep/valid as the model encoded them."""
    share = torch.gather(F.avg_pool2d(masks, patch).flatten(1), 1, keep)  # (B, K): tumor share of each patch
    largest = share.amax(1, keepdim=True)
    is_largest = ((share >= largest) & (largest > 0)).float()
    target = torch.where(share >= min_share, (share / full_share).clamp(max=1.0), torch.zeros_like(share))
    target = torch.maximum(target, is_largest)
    real = torch.ones_like(target) if valid is None else valid.to(target.dtype)
    bce = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
    loss = 0.0
    for weight in (target * real, (1 - target) * real):
        if weight.sum() > 0:
            loss = loss + 0.5 * (bce * weight).sum() / weight.sum()
    return loss if torch.is_tensor(loss) else scores.sum() * 0


class Classification(Task):
    """The classifier fine-tune (or probe) as an engine Task: class-balanced BCE on the slice label (of K > 2
    classes, class-balanced cross-entropy), the patch labels from the masks beside it (CLS_PATCH_WEIGHT),
    layer-wise learning-rate decay."""
    kind = "classifier"
    lr_setting = "CLS_LR"
    seed_offset = 1
    # the best checkpoint has the lowest class-balanced validation log loss, a proper score: the highest
    # AUROC picks an early epoch where it ties near 1 by chance, its probabilities not yet calibrated
    monitor, maximize, shown = "loss", False, ("auroc", "accuracy")
    must_match = ("variant", "label_fraction")

    def __init__(self, cfg, model, train_set, val_set, device, variant, extra):
        self.num_classes = model.cfg.num_classes
        counts = torch.bincount(train_set.labels.long(), minlength=self.num_classes).float()
        if (counts == 0).any():
            names = extra.get("classes") or ["tumor-free", "tumor"]
            raise MiramError(f"the training split has {', '.join(f'{int(n)} {c}' for c, n in zip(names, counts.tolist()))}"
                             " images: classification needs every class (check the MASK/ or class folders)")
        self.cfg, self.train_set, self.val_set, self.device = cfg, train_set, val_set, device
        self.name, self.variant = variant, variant
        self.pos_weight = (counts[0] / counts[1]).to(device)  # two classes: the tumor slices weigh as the others
        self.class_weight = (counts.sum() / (self.num_classes * counts)).to(device)  # K classes: each weighs alike
        self.decay = layer_decay(len(model.encoder.blocks), cfg.LAYER_DECAY)
        self.patch = model.cfg.patch_size
        # patch labels where every slice has its outline (class folders give a slice's label, not where)
        self.masks = train_set.masks if cfg.CLS_PATCH_WEIGHT > 0 and bool(train_set.has_mask.all()) else None
        self.epochs, self.warmup_epochs, self.lr = cfg.CLS_EPOCHS, cfg.CLS_WARMUP_EPOCHS, cfg.CLS_LR
        self.weight_decay, self.n_train, self.extra = cfg.CLS_WEIGHT_DECAY, len(train_set), extra
        suffix = suffix_of(variant)
        self.checkpoint = cfg.artifact("classifier_checkpoint", suffix)
        self.best, self.log = cfg.artifact("classifier", suffix), cfg.artifact("classifier_log", suffix)

    def lr_scale(self, name):
        if self.variant == "linear_probe" and name.startswith("encoder."):
            return None  # frozen
        return self.decay(name)

    def train_mode(self, model):
        model.train()
        if self.variant == "linear_probe":
            model.encoder.eval()  # frozen: no dropout or statistics change in the encoder

    def batch(self, gidx, mine, gen):
        labels = self.train_set.labels[gidx[mine]].to(self.device)
        x = local_images(self.train_set.images, gidx, mine, gen, self.device, self.cfg.AUGMENT, self.masks)
        x, masks = x if self.masks is not None else (x, None)
        return x, masks, labels

    def forward(self, net, batch):
        return net(batch[0], with_evidence=True)

    def loss(self, out, batch):
        logits, scores, keep, valid, _ = out
        if self.num_classes == 2:
            image_loss = F.binary_cross_entropy_with_logits(logits.float(), batch[2], pos_weight=self.pos_weight)
        else:
            image_loss = F.cross_entropy(logits.float(), batch[2].long(), weight=self.class_weight)
        if batch[1] is None:
            return image_loss, {"loss": image_loss.item()}
        patch_loss = patch_supervision(scores, batch[1], keep, valid, self.patch)
        loss = image_loss + self.cfg.CLS_PATCH_WEIGHT * patch_loss
        return loss, {"loss": loss.item(), "image_loss": image_loss.item(), "patch_loss": patch_loss.item()}

    def validate(self, model):
        probs, labels = predict_all(model, self.val_set.images, self.device, self.cfg.AMP), self.val_set.labels.numpy()
        metrics = (binary_metrics(probs, labels, self.cfg.CLS_THRESHOLD) if probs.ndim == 1 else
                   {k: v for k, v in class_metrics(probs, labels, self.extra["classes"], self.cfg.CLS_THRESHOLD).items()
                    if k in ("auroc", "accuracy", "macro_sensitivity")})
        return {**metrics, "loss": balanced_log_loss(probs, labels)}


# ---- scoring -------------------------------------------------------------------------------------------

OPERATING_RULE = "Youden's J (sensitivity + specificity - 1) at its largest on the validation split"


def operating_threshold(probs, labels):
    """The threshold OPERATING_RULE picks: among the probabilities as cut-offs (p >= t is a tumor), the one with
    the largest sensitivity + specificity; of a tie, the one nearest 0.5. NaN without both classes."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    cuts = np.unique(probs)
    called = probs[None, :] >= cuts[:, None]  # (cut-offs, slices)
    j = called[:, labels].mean(1) + (~called[:, ~labels]).mean(1) - 1
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def subject_metrics(probs, labels, hits, outlined, rows_by_subject, threshold):
    """{subject: binary metrics over its slices (AUROC None where it has one class), the default heatmap's
    pointing game over its outlined tumor slices (None without one)}: which heads of a few a classifier fails on."""
    out = {}
    for subject, rows in rows_by_subject.items():
        m = binary_metrics(probs[rows], labels[rows], threshold)
        tumor_hits = hits[rows][outlined[rows]]
        out[subject] = {k: None if m[k] != m[k] else m[k]  # NaN (one class) -> null in the JSON
                        for k in ("auroc", "accuracy", "sensitivity", "specificity", "n", "n_positive")}
        out[subject]["pointing_game"] = float(tumor_hits.mean()) if len(tumor_hits) else None
    return out


def score(model, data, cfg, device, by_subject=False):
    """-> (binary metrics, or of K classes class_metrics with the binary ones of any tumor against class 0
    as "any_tumor", and every heatmap's localization on one labelled slice set, probabilities, heatmaps, tumor
    masks). by_subject: also "per_subject" (subject_metrics), for a set of a few heads. The operating point
    and the per-subject figures are those of p(tumor) (runtime.tumor_probability)."""
    labels = data.labels.numpy().astype(int)
    outlined = (labels > 0) & data.has_mask.numpy()  # tumor slices whose outline is known: the maps are scored there
    tumor = data.masks[:, 0].numpy() & outlined[:, None, None]
    probs, heats = predict_all(model, data.images, device, cfg.AMP, with_attention=True)
    p_tumor, is_tumor = tumor_probability(probs), labels > 0
    m = binary_metrics(probs, labels, cfg.CLS_THRESHOLD) if probs.ndim == 1 else {
        **class_metrics(probs, labels, data.classes, cfg.CLS_THRESHOLD), "any_tumor": binary_metrics(p_tumor, is_tumor, cfg.CLS_THRESHOLD)}
    loc, hits = {}, np.zeros(len(labels))  # hits: the default map's pointing game per slice, 0 where no tumor
    for name, h in heats.items():
        if not outlined.any():
            loc[name] = {}
            continue
        mass, hit = localization(h[outlined], tumor[outlined])
        if name == DEFAULT_HEATMAP:
            hits[outlined] = hit
        share = tumor[outlined].mean(axis=(1, 2))
        loc[name] = {"mass_inside": float(mass.mean()), "pointing_game": float(hit.mean()),
                     "tumor_share_of_image": float(share.mean()),
                     "mass_inside_over_share": float((mass / np.maximum(share, 1e-12)).mean()),
                     # a few slices with most of the mass inside lift the mean: the median is the typical slice
                     "mass_inside_over_share_median": float(np.median(mass / np.maximum(share, 1e-12)))}
    chosen = operating_threshold(p_tumor, is_tumor)
    operating = {"rule": OPERATING_RULE, "threshold": chosen}
    if chosen == chosen:  # not NaN
        at = binary_metrics(p_tumor, is_tumor, chosen)
        operating.update({k: at[k] for k in ("sensitivity", "specificity", "accuracy")})
    m.update(localization=loc, default_heatmap=DEFAULT_HEATMAP, n_subjects=len(set(data.subjects)),
             operating_point=operating)
    if by_subject:
        m["per_subject"] = subject_metrics(p_tumor, is_tumor, hits, outlined, data.rows_by_subject(), cfg.CLS_THRESHOLD)
    return m, probs, heats, tumor

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

import classify
import engine
import heatmaps
import models
import runtime
import train
import tumor
from checkpoint import build_from_checkpoint
from config import MiramError, ModelConfig, load_config
from conftest import tiny_args
from dataset import load_split
from imaging import model_input, read_slice


def test_labels_from_masks_and_split_disjoint(tiny_data):
    cfg = load_config(environ={"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": tiny_data})
    tr, va = load_split(cfg, quiet=True)
    assert set(tr.subjects).isdisjoint(va.subjects)
    for s in (tr, va):
        assert torch.equal(s.labels > 0, s.masks.flatten(1).any(1))


def test_binary_metrics_against_sklearn():
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    m = runtime.binary_metrics(probs, labels, 0.5)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["confusion_matrix"] == [[2, 2], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(f1_score(labels, probs >= 0.5)) and m["accuracy"] == pytest.approx(4 / 7)


def test_auroc_is_sklearns_with_ties_and_nan_with_one_class():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        scores = np.round(rng.random(30), 1)  # many ties
        if 0 < labels.sum() < 30:
            assert runtime.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(runtime.auroc([0.2, 0.4], [1, 1]))


def test_the_operating_threshold_is_youdens_on_a_known_set():
    # cut at 0.3: 3 of 3 tumors, 3 of 4 tumor-free right (J 0.75); at 0.6 (J 0.67) and 0.1 (J 0.25) less
    probs = np.array([0.9, 0.6, 0.3, 0.4, 0.2, 0.1, 0.05])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    assert tumor.operating_threshold(probs, labels) == 0.3
    # a tie in J: the cut-off nearest 0.5
    assert tumor.operating_threshold([0.9, 0.2, 0.8, 0.1], [1, 0, 1, 0]) == 0.8
    assert np.isnan(tumor.operating_threshold([0.9, 0.2], [1, 1]))


def test_rollout_on_a_known_stack():
    eye = torch.eye(3)[None, None]  # attention to self only: rollout is the identity
    assert torch.allclose(heatmaps.attention_rollout([eye, eye]), torch.eye(3)[None])
    # one block, all attention to token 0: 0.5*A + 0.5*I, rows normalised
    a = torch.zeros(1, 2, 3, 3)
    a[..., 0] = 1
    r = heatmaps.attention_rollout([a])[0]
    expect = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    assert torch.allclose(r, expect)
    # two such blocks compose by matrix product
    assert torch.allclose(heatmaps.attention_rollout([a, a])[0], expect @ expect)


def test_relevance_on_a_known_stack():
    eye = torch.eye(3)[None, None]
    zero = torch.zeros(1, 1, 3, 3)
    # no gradient anywhere: only the identity (each token is its own evidence)
    assert torch.allclose(heatmaps.attention_relevance([eye, eye], [zero, zero]), torch.eye(3)[None])
    # one block, two heads: A * dA per head, negatives dropped, heads averaged, added to I
    a = torch.full((1, 2, 3, 3), 0.5)
    g = torch.zeros(1, 2, 3, 3)
    g[0, 0, 0, 1], g[0, 1, 0, 1], g[0, 0, 0, 2] = 2.0, 1.0, -4.0  # negative evidence is dropped
    r = heatmaps.attention_relevance([a], [g])[0]
    expect = torch.eye(3)
    expect[0, 1] = (0.5 * 2.0 + 0.5 * 1.0) / 2
    assert torch.allclose(r, expect)
    # a second block composes through the residual: R + cam @ R
    assert torch.allclose(heatmaps.attention_relevance([a, a], [g, g])[0], expect + (expect - torch.eye(3)) @ expect)


def test_heatmaps_of_a_slice_do_not_depend_on_its_batch():
    from config import ModelConfig
    from models import TumorClassifier
    torch.manual_seed(0)
    m = TumorClassifier(ModelConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)).eval()
    x = torch.rand(3, 1, 32, 32)
    x[1, :, :16] = 0  # half blank: padded beside the others
    cpu = torch.device("cpu")
    probs, heats = tumor.predict_all(m, x, cpu, False, with_attention=True)
    assert set(heats) == {"evidence", "last_block", "rollout", "relevance"}
    assert np.allclose(tumor.predict_all(m, x, cpu, False), probs, atol=1e-6)
    for i in range(3):
        p, h = tumor.predict_all(m, x[i:i + 1], cpu, False, with_attention=True)
        assert abs(p[0] - probs[i]) < 1e-5
        for k in heats:
            assert np.abs(h[k][0] - heats[k][i]).max() < 1e-6, k
            assert heats[k][i].min() >= 0 and heats[k][i].sum() == pytest.approx(1.0)
    assert heats["relevance"][1, :8].sum() == 0  # blank patches were not encoded (bilinear spreads the edge)
    assert all(p.grad is None for p in m.parameters())  # the maps' backward pass leaves no gradients behind


def test_localization_measures():
    heat = np.zeros((1, 4, 4))
    heat[0, 0, 0], heat[0, 3, 3] = 0.75, 0.25
    tumor = np.zeros((1, 4, 4), bool)
    tumor[0, :2, :2] = True
    mass, hit = runtime.localization(heat, tumor)
    assert mass[0] == pytest.approx(0.75) and hit[0] == 1.0
    up = runtime.upsample_heatmaps(np.arange(4.0).reshape(1, 2, 2), 8)
    assert up.shape == (1, 8, 8) and up.sum() == pytest.approx(1.0) and up[0, -1, -1] == up.max()


def test_layer_decay_gives_the_encoder_less():
    from config import ModelConfig
    from models import TumorClassifier
    m = TumorClassifier(ModelConfig(img_size=32, embed_dim=16, depth=2, num_heads=2))
    groups = engine.param_groups(m, 0.05, engine.layer_decay(len(m.encoder.blocks), 0.5))
    scales = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scales[id(m.evidence.weight)] == 1.0
    assert scales[id(m.encoder.blocks[1].mlp.fc1.weight)] == 0.5
    assert scales[id(m.encoder.blocks[0].mlp.fc1.weight)] == 0.25
    assert scales[id(m.encoder.patch_embed.weight)] == 0.125
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in m.parameters())


def test_classify_end_to_end_variants_and_predict(tiny_data, tmp_path, capsys):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    pre = torch.load(os.path.join(out, "best_miram_mae.pth"), weights_only=True)["model"]
    m = classify.main(tiny_args(tiny_data, out, "--n-viz", "1"))
    for f in ("best_tumor_classifier.pth", "classification_metrics.json"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    assert any(f.startswith("tumor_viz_") for f in os.listdir(out))
    saved = json.load(open(os.path.join(out, "classification_metrics.json")))
    (tn, fp), (fn, tp) = saved["confusion_matrix"]
    assert saved["sensitivity"] == tp / (tp + fn) and saved["n_positive"] == tp + fn and saved["n"] == tn + fp + fn + tp
    assert set(saved["localization"]) == {"evidence", "last_block", "rollout", "relevance"}
    assert saved["default_heatmap"] == "evidence"
    op = saved["operating_point"]  # chosen on validation: at least as good as 0.5 by its own rule
    assert op["rule"] == tumor.OPERATING_RULE and 0 <= op["threshold"] <= 1
    assert op["sensitivity"] + op["specificity"] >= saved["sensitivity"] + saved["specificity"] - 1e-9
    # the run says which kernels and precision it trained with, and why
    kernels = saved["run"]["kernels"]
    assert kernels["precision"] == "fp32" and kernels["matmul"] in ("default", "onednn") and kernels["why"]["matmul"]
    for loc in saved["localization"].values():  # a share of the positive slices: hits / positives
        assert loc["pointing_game"] * saved["n_positive"] == pytest.approx(round(loc["pointing_game"] * saved["n_positive"]))
    # the engine ran every epoch with ceil(training slices / batch) optimizer steps each
    cfg = load_config(environ={"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": tiny_data})
    n_train = len(load_split(cfg, quiet=True)[0])  # every tiny slice has a mask: all are labelled
    assert len(saved["history"]) == cfg.CLS_EPOCHS and saved["optimizer_steps"] == cfg.CLS_EPOCHS * -(-n_train // 4)
    assert sum(map(sum, m["confusion_matrix"])) == m["n"]
    # linear probe: the encoder stays exactly the pre-trained one
    classify.main(tiny_args(tiny_data, out, "--linear-probe", "--n-viz", "0"))
    probe = torch.load(os.path.join(out, "best_tumor_classifier_linear_probe.pth"), weights_only=True)["model"]
    for k, v in pre.items():
        if k.startswith("encoder."):
            assert torch.equal(probe[k], v), k
    classify.main(tiny_args(tiny_data, str(tmp_path / "scratch"), "--from-scratch", "--n-viz", "0"))
    assert os.path.isfile(tmp_path / "scratch" / "classification_metrics_from_scratch.json")
    scan = os.path.join(tiny_data, "HR", "subj0_000.tif")
    r = classify.main(tiny_args(tiny_data, out, "--predict", scan))
    best, _ = build_from_checkpoint(os.path.join(out, "best_tumor_classifier.pth"), "classifier")
    with torch.no_grad():  # the heatmap path's probability is the plain forward's
        plain = torch.sigmoid(best.eval()(torch.from_numpy(model_input(read_slice(scan), 64)))).item()
    assert r["probability"] == pytest.approx(plain, abs=1e-6) and os.path.isfile(r["heatmap"])
    assert "p(tumor)" in capsys.readouterr().out


def test_patch_labels_come_from_the_mask_of_each_encoded_patch():
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 8:16, 16:24] = 1  # patch (1, 2) of a 4 x 4 grid: index 6
    keep = torch.tensor([[6, 0, 1]])
    agree = torch.tensor([[4.0, -4.0, -4.0]])
    assert tumor.patch_supervision(agree, masks, keep, None, 8) < 0.05
    assert tumor.patch_supervision(-agree, masks, keep, None, 8) > 3.0
    # padding (valid False) is not a patch: its score does not count
    valid = torch.tensor([[True, True, False]])
    assert tumor.patch_supervision(torch.tensor([[4.0, -4.0, 9.0]]), masks, keep, valid, 8) < 0.05


def test_a_lesion_smaller_than_the_share_still_marks_the_patch_holding_most_of_it():
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 5:10, 2:4] = 1  # 10 pixels: 6 in patch 0 (9% of it), 4 in patch 4 below
    keep = torch.tensor([[0, 4, 1]])
    assert tumor.patch_supervision(torch.tensor([[4.0, -4.0, -4.0]]), masks, keep, None, 8) < 0.05
    assert tumor.patch_supervision(torch.tensor([[-4.0, 4.0, -4.0]]), masks, keep, None, 8) > 3.0
    # a tumor-free slice has no tumor patch at all
    assert tumor.patch_supervision(torch.full((1, 3), -4.0), masks * 0, keep, None, 8) < 0.05


def test_a_patch_holding_more_tumor_has_the_higher_label():
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 0:8, 0:8] = 1  # patch 0: all tumor
    masks[..., 0:2, 8:16] = 1  # patch 1: a quarter, label 0.5: best scored at logit 0
    keep = torch.tensor([[0, 1, 2]])

    def loss(*scores):
        return tumor.patch_supervision(torch.tensor([scores]), masks, keep, None, 8).item()
    assert loss(6.0, 0.0, -6.0) < min(loss(6.0, 6.0, -6.0), loss(6.0, -6.0, -6.0))


def test_a_mask_moves_with_its_augmented_image():
    import augment
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 4:14, 18:28] = 1.0
    masks = images > 0.5
    g = torch.Generator().manual_seed(3)
    x, m = augment.local_images(images, torch.arange(4), torch.ones(4, dtype=torch.bool), g, torch.device("cpu"),
                                True, masks)
    assert m.dtype == x.dtype and not torch.equal(m, masks.float())  # moved
    assert torch.equal(x > 0, m > 0)  # moved alike (the gamma changes intensity, never zero to non-zero)


def test_the_default_map_points_at_the_only_difference():
    """Slices that differ only by a lesion: trained a few steps with patch labels, the classifier's own
    map peaks inside the lesion on lesions it has not seen, alone and in a padded batch alike."""
    from config import ModelConfig
    from heatmaps import evidence_map
    from models import TumorClassifier
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def slices(n):
        base = 0.3 + 0.1 * torch.rand(n, 1, 32, 32, generator=g)
        lesion = torch.zeros(n, 1, 32, 32)
        for i in range(0, n, 2):  # every other slice
            y, x = torch.randint(0, 4, (2,), generator=g).tolist()
            lesion[i, :, y * 8 + 2:y * 8 + 6, x * 8 + 2:x * 8 + 6] = 1
        return torch.where(lesion > 0, torch.full_like(base, 0.9), base), lesion
    m = TumorClassifier(ModelConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):
        x, lesion = slices(16)
        logits, scores, keep, valid, _ = m(x, with_evidence=True)
        labels = (lesion.flatten(1).amax(1) > 0).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + \
            tumor.patch_supervision(scores, lesion, keep, valid, 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x, lesion = slices(8)
    x[1, :, :16] = 0  # a half-blank slice pads the batch
    with torch.no_grad():
        _, scores, _, valid, where = m(x, with_evidence=True)
        maps = evidence_map(scores, where, valid, 4)
        alone = [evidence_map(out[1], out[4], out[3], 4)
                 for out in (m(x[i:i + 1], with_evidence=True) for i in range(0, 8, 2))]
    inside = torch.nn.functional.max_pool2d(lesion, 8).flatten(1) > 0  # the lesion's patch
    for k, i in enumerate(range(0, 8, 2)):
        assert inside[i, maps[i].flatten().argmax()]
        assert torch.allclose(alone[k][0], maps[i], atol=1e-5)


def test_the_balanced_log_loss_weighs_both_classes_alike_and_rewards_calibration():
    labels = np.array([1, 0, 0, 0])
    confident = tumor.balanced_log_loss([0.9, 0.1, 0.1, 0.1], labels)
    assert confident == pytest.approx(-np.log(0.9))
    assert tumor.balanced_log_loss([0.4, 0.1, 0.1, 0.1], labels) > confident  # right side, less sure
    # the lone tumor counts as much as the three tumor-free slices
    assert tumor.balanced_log_loss([0.1, 0.1, 0.1, 0.1], labels) == pytest.approx((-np.log(0.1) - np.log(0.9)) / 2)


def test_a_validation_split_of_one_class_is_refused_naming_its_subjects(tmp_path):
    from conftest import write_tiny_dataset
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=4, per_subject=1)  # subj1 and subj3: tumor-free
    out = str(tmp_path / "o")
    train.main(tiny_args(data, out, "--val-subjects", "subj1"))
    with pytest.raises(MiramError, match=r"1 labelled slices \(subj1\) are all tumor-free: AUROC needs both"):
        classify.main(tiny_args(data, out, "--val-subjects", "subj1"))


def test_k_classes_pool_each_class_and_the_map_shows_the_most_probable_tumor_class():
    from models import TumorClassifier, pool_evidence, shown_logit
    cfg = ModelConfig(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                      decoder_depth=1, decoder_num_heads=2, num_classes=4)
    torch.manual_seed(0)
    m = TumorClassifier(cfg).eval()
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        logits, scores, keep, valid, _ = m(x, with_evidence=True)
        probs = tumor.predict_all(m, x, torch.device("cpu"), False)
    assert logits.shape == (6, 4) and (logits[:, 0] == 0).all()  # class 0: the reference
    assert probs.shape == (6, 4) and np.allclose(probs.sum(1), 1, atol=1e-6)
    # the map's patch scores are the shown class's: they pool to its logit, the largest of classes 1..3
    assert torch.allclose(pool_evidence(scores, valid), shown_logit(logits), atol=1e-5)
    assert torch.equal(shown_logit(logits), logits[:, 1:].max(1).values)
    # two classes are the binary model: one logit a slice, its sigmoid the probability
    binary = TumorClassifier(dataclasses.replace(cfg, num_classes=2)).eval()
    assert binary.evidence.out_features == 1 and binary(x).shape == (6,)


def test_class_metrics_against_sklearn_and_the_calling_rule_on_a_known_set():
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from runtime import class_metrics, predicted_class
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    probs = rng.dirichlet(np.ones(3), 60) + np.eye(3)[labels] * 0.8
    probs /= probs.sum(1, keepdims=True)
    m = class_metrics(probs, labels, ["none", "a", "b"], 0.5)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    pred = predicted_class(probs, 0.5)
    assert m["confusion_matrix"] == confusion_matrix(labels, pred).tolist()
    assert m["per_class"]["a"]["sensitivity"] == pytest.approx((pred[labels == 1] == 1).mean())
    assert m["per_class"]["a"]["specificity"] == pytest.approx((pred[labels != 1] != 1).mean())
    # the rule: class 0 unless p(tumor) = 1 - p(class 0) reaches the threshold, then the likeliest other class
    known = np.array([[0.45, 0.30, 0.25], [0.55, 0.05, 0.40], [0.1, 0.2, 0.7]])
    assert predicted_class(known, 0.5).tolist() == [1, 0, 2]
    assert predicted_class(np.array([0.2, 0.5, 0.9]), 0.5).tolist() == [0, 1, 1]  # two classes: as before
    assert tumor.balanced_log_loss(np.eye(3)[[0, 1, 2]] * 0.98 + 0.01, [0, 1, 2]) == pytest.approx(-np.log(0.99))

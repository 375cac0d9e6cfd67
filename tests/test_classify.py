import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

import classify
import engine
import models
import runtime
import train
from checkpoint import build_from_checkpoint
from config import MiramError, load_config
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


def test_rollout_on_a_known_stack():
    eye = torch.eye(3)[None, None]  # attention to self only: rollout is the identity
    assert torch.allclose(models.attention_rollout([eye, eye]), torch.eye(3)[None])
    # one block, all attention to token 0: 0.5*A + 0.5*I, rows normalised
    a = torch.zeros(1, 2, 3, 3)
    a[..., 0] = 1
    r = models.attention_rollout([a])[0]
    expect = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    assert torch.allclose(r, expect)
    # two such blocks compose by matrix product
    assert torch.allclose(models.attention_rollout([a, a])[0], expect @ expect)


def test_relevance_on_a_known_stack():
    eye = torch.eye(3)[None, None]
    zero = torch.zeros(1, 1, 3, 3)
    # no gradient anywhere: only the identity (each token is its own evidence)
    assert torch.allclose(models.attention_relevance([eye, eye], [zero, zero]), torch.eye(3)[None])
    # one block, two heads: A * dA per head, negatives dropped, heads averaged, added to I
    a = torch.full((1, 2, 3, 3), 0.5)
    g = torch.zeros(1, 2, 3, 3)
    g[0, 0, 0, 1], g[0, 1, 0, 1], g[0, 0, 0, 2] = 2.0, 1.0, -4.0  # negative evidence is dropped
    r = models.attention_relevance([a], [g])[0]
    expect = torch.eye(3)
    expect[0, 1] = (0.5 * 2.0 + 0.5 * 1.0) / 2
    assert torch.allclose(r, expect)
    # a second block composes through the residual: R + cam @ R
    assert torch.allclose(models.attention_relevance([a, a], [g, g])[0], expect + (expect - torch.eye(3)) @ expect)


@pytest.mark.parametrize("shifted", [False, True])
def test_heatmaps_of_a_slice_do_not_depend_on_its_batch(shifted):
    from config import ModelConfig
    from models import TumorClassifier
    torch.manual_seed(0)
    m = TumorClassifier(ModelConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)).eval()
    x = torch.rand(3, 1, 32, 32)
    x[1, :, :16] = 0  # half blank: padded beside the others
    cpu = torch.device("cpu")
    probs, heats = classify.predict_all(m, x, cpu, False, with_attention=True, shifted=shifted)
    assert set(heats) == {"evidence", "last_block", "rollout", "relevance"}
    assert np.allclose(classify.predict_all(m, x, cpu, False, shifted=shifted), probs, atol=1e-6)
    if shifted:  # the views differ, so their average is not the single pass
        assert np.abs(probs - classify.predict_all(m, x, cpu, False)).max() > 1e-4
    for i in range(3):
        p, h = classify.predict_all(m, x[i:i + 1], cpu, False, with_attention=True, shifted=shifted)
        assert abs(p[0] - probs[i]) < 1e-5
        for k in heats:
            assert np.abs(h[k][0] - heats[k][i]).max() < 1e-6, k
            assert heats[k][i].min() >= 0 and heats[k][i].sum() == pytest.approx(1.0)
    if not shifted:
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


def test_translate_moves_and_zero_fills():
    x = np.arange(1.0, 1 + 2 * 5 * 6).reshape(2, 5, 6)
    y = runtime.translate(x, 2, -3)
    assert np.array_equal(y[:, 2:, :3], x[:, :3, 3:])
    assert (y[:, :2] == 0).all() and (y[:, :, 3:] == 0).all()
    assert np.array_equal(runtime.translate(y, -2, 3)[:, :3, 3:], x[:, :3, 3:])  # back, less the lost border


def test_shift_averaged_maps_land_back_on_the_input():
    """A model whose map is its input moved with it: every view's map, moved back, is the input's own, so
    the average is too; the probability is the views' mean."""
    img = np.zeros((2, 1, 32, 32), np.float32)
    img[0, 0, 10:14, 12:20], img[1, 0, 16:18, 8:11] = 1.0, 0.5
    seen = []

    def run(x):
        seen.append(x.copy())
        return x.mean(axis=(1, 2, 3)) + len(seen), {"m": x[:, 0] / x[:, 0].sum(axis=(1, 2), keepdims=True)}
    probs, maps = runtime.shift_averaged(run, img, 8)
    assert [tuple(np.argwhere(v[0, 0])[0] - np.argwhere(img[0, 0])[0]) for v in seen] == runtime.half_patch_views(8)
    expect = img[:, 0] / img[:, 0].sum(axis=(1, 2), keepdims=True)
    assert np.abs(maps["m"] - expect).max() < 1e-7
    assert np.allclose(probs, img.mean(axis=(1, 2, 3)) + 2.5)  # views 1..4 added 1..4


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
    # the other views (half-patch shifts averaged) are measured beside the configured single pass
    assert saved["views"] == "single pass" and saved["other_views"]["views"] == "half-patch shifts averaged"
    assert set(saved["other_views"]["localization"]) == set(saved["localization"])
    assert saved["other_views"]["n"] == saved["n"]
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
    assert classify.patch_supervision(agree, masks, keep, None, 8) < 0.05
    assert classify.patch_supervision(-agree, masks, keep, None, 8) > 3.0
    # padding (valid False) is not a patch: its score does not count
    valid = torch.tensor([[True, True, False]])
    assert classify.patch_supervision(torch.tensor([[4.0, -4.0, 9.0]]), masks, keep, valid, 8) < 0.05


def test_a_lesion_smaller_than_the_share_still_marks_the_patch_holding_most_of_it():
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 5:10, 2:4] = 1  # 10 pixels: 6 in patch 0 (9% of it), 4 in patch 4 below
    keep = torch.tensor([[0, 4, 1]])
    assert classify.patch_supervision(torch.tensor([[4.0, -4.0, -4.0]]), masks, keep, None, 8) < 0.05
    assert classify.patch_supervision(torch.tensor([[-4.0, 4.0, -4.0]]), masks, keep, None, 8) > 3.0
    # a tumor-free slice has no tumor patch at all
    assert classify.patch_supervision(torch.full((1, 3), -4.0), masks * 0, keep, None, 8) < 0.05


def test_a_patch_holding_more_tumor_has_the_higher_label():
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., 0:8, 0:8] = 1  # patch 0: all tumor
    masks[..., 0:2, 8:16] = 1  # patch 1: a quarter, label 0.5: best scored at logit 0
    keep = torch.tensor([[0, 1, 2]])

    def loss(*scores):
        return classify.patch_supervision(torch.tensor([scores]), masks, keep, None, 8).item()
    assert loss(6.0, 0.0, -6.0) < min(loss(6.0, 6.0, -6.0), loss(6.0, -6.0, -6.0))


def test_a_mask_moves_with_its_augmented_image():
    import dataset
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 4:14, 18:28] = 1.0
    masks = images > 0.5
    g = torch.Generator().manual_seed(3)
    x, m = dataset.local_images(images, torch.arange(4), torch.ones(4, dtype=torch.bool), g, torch.device("cpu"),
                                True, masks)
    assert m.dtype == x.dtype and not torch.equal(m, masks.float())  # moved
    assert torch.equal(x > 0, m > 0)  # moved alike (the gamma changes intensity, never zero to non-zero)


def test_the_default_map_points_at_the_only_difference():
    """Slices that differ only by a lesion: trained a few steps with patch labels, the classifier's own
    map peaks inside the lesion on lesions it has not seen, alone and in a padded batch alike."""
    from config import ModelConfig
    from models import TumorClassifier, evidence_map
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
        logits, scores, keep, valid = m(x, with_evidence=True)
        labels = (lesion.flatten(1).amax(1) > 0).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + \
            classify.patch_supervision(scores, lesion, keep, valid, 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x, lesion = slices(8)
    x[1, :, :16] = 0  # a half-blank slice pads the batch
    with torch.no_grad():
        _, scores, keep, valid = m(x, with_evidence=True)
        maps = evidence_map(scores, keep, valid, 4)
        alone = [evidence_map(*[t for t in m(x[i:i + 1], with_evidence=True)[1:]], 4) for i in range(0, 8, 2)]
    inside = torch.nn.functional.max_pool2d(lesion, 8).flatten(1) > 0  # the lesion's patch
    for k, i in enumerate(range(0, 8, 2)):
        assert inside[i, maps[i].flatten().argmax()]
        assert torch.allclose(alone[k][0], maps[i], atol=1e-5)


def test_the_balanced_log_loss_weighs_both_classes_alike_and_rewards_calibration():
    labels = np.array([1, 0, 0, 0])
    confident = classify.balanced_log_loss([0.9, 0.1, 0.1, 0.1], labels)
    assert confident == pytest.approx(-np.log(0.9))
    assert classify.balanced_log_loss([0.4, 0.1, 0.1, 0.1], labels) > confident  # right side, less sure
    # the lone tumor counts as much as the three tumor-free slices
    assert classify.balanced_log_loss([0.1, 0.1, 0.1, 0.1], labels) == pytest.approx((-np.log(0.1) - np.log(0.9)) / 2)


def _head(size=64, level=0.6, lesion=None):
    """A square of uniform 'brain' on black, optionally with a dark disc (centre, radius, share of level)."""
    img = torch.zeros(1, 1, size, size)
    img[..., 8:size - 8, 8:size - 8] = level
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    if lesion is not None:
        (cy, cx), r, share = lesion
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        mask[0, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[mask] = level * share
    return img, mask


def _paste_into_healthy_slices(n, scale, contrast, seed=0):
    """A head with one lesion (70% of its tissue) and a lesion-free head, the batch n copies of the second,
    pasted -> (lesion, healthy, paste(), its result, the indices pasted onto the lesion-free head)."""
    import dataset
    source, lesion = _head(level=0.6, lesion=((30, 30), 4, 0.7))
    healthy, clear = _head(level=0.4)
    paster = dataset.LesionPaster(0.99, torch.cat([source, healthy]), torch.cat([lesion, clear]), scale=scale,
                                  contrast=contrast)
    batch = torch.cat([healthy] * n)

    def paste():
        return paster(batch, torch.zeros_like(batch), n, slice(0, n), torch.Generator().manual_seed(seed))
    imgs, masks, pasted = out = paste()
    assert imgs.min() >= 0 and imgs.max() <= 1
    onto_healthy = [i for i in range(n) if pasted[i] and imgs[i][~lesion[0] & (masks[i] < 0.5)].max() < 0.5]
    return lesion, healthy, paste, out, onto_healthy


def test_a_pasted_lesion_keeps_its_contrast_on_the_tissue_it_lands_on():
    # without size and contrast variation: the lesion as it was found
    lesion, healthy, paste, (imgs, masks, pasted), onto_healthy = _paste_into_healthy_slices(16, 1, 1)
    onto_source = [i for i in range(16) if i not in onto_healthy]
    assert pasted.all() and onto_healthy and onto_source
    for i in onto_healthy:
        assert int((masks[i] > 0.5).sum()) == int(lesion.sum())  # moved whole (turned or flipped, same area)
        assert imgs[i][masks[i] > 0.5].mean() == pytest.approx(0.4 * 0.7, abs=0.03)  # 70% of where it landed
        assert (imgs[i][(masks[i] < 0.5) & (healthy[0] > 0)] - 0.4).abs().max() < 0.15  # the rest as it was
        assert (imgs[i][healthy[0] == 0] == 0).all()  # never outside the head
    for i in onto_source:  # the slice's own lesion stays in its mask beside the pasted one
        assert (masks[i][lesion[0]] > 0.5).all() and (masks[i] > 0.5).sum() > lesion.sum()
    again = paste()
    assert torch.equal(again[0], imgs) and torch.equal(again[1], masks)  # reproducible from the generator


def test_pasted_lesions_vary_in_size_and_contrast_within_their_ranges():
    lesion, _, _, (imgs, masks, _), onto_healthy = _paste_into_healthy_slices(64, 1.5, 1.5)
    assert len(onto_healthy) > 10
    areas = np.array([int((masks[i] > 0.5).sum()) for i in onto_healthy]) / int(lesion.sum())
    darkness = np.array([float(imgs[i][masks[i] > 0.5].mean()) / 0.4 for i in onto_healthy])  # 0.7 as found
    # areas within 1/1.5^2 .. 1.5^2 of the lesion's (a pixel's rounding aside), both ways
    assert areas.min() < 0.8 and areas.max() > 1.25 and 0.35 < areas.min() and areas.max() < 2.6
    # the lesion's 30% deficit scaled by 1/1.5 .. 1.5: core darkness between 0.55 and 0.8, both ways
    assert darkness.min() < 0.66 and darkness.max() > 0.74 and 0.5 < darkness.min() and darkness.max() < 0.85


def test_pasting_replaces_a_share_of_the_batch_and_leaves_the_rest():
    import dataset
    source, lesion = _head(level=0.6, lesion=((30, 30), 4, 0.7))
    batch = torch.cat([_head(level=0.5)[0]] * 64)
    paster = dataset.LesionPaster(0.25, source, lesion)
    imgs, masks, pasted = paster(batch, torch.zeros_like(batch), 64, slice(0, 64), torch.Generator().manual_seed(1))
    assert 6 <= int(pasted.sum()) <= 26  # about a quarter
    assert torch.equal(imgs[~pasted], batch[~pasted]) and (masks[~pasted] == 0).all()
    assert (masks[pasted].flatten(1).sum(1) > 0).all()
    # a process's share of the global batch draws as the whole batch does
    part = paster(batch[16:32], torch.zeros_like(batch[16:32]), 64, slice(16, 32), torch.Generator().manual_seed(1))
    assert torch.equal(part[0], imgs[16:32]) and torch.equal(part[2], pasted[16:32])
    with pytest.raises(MiramError, match="no lesion"):
        dataset.LesionPaster(0.5, batch[:2], torch.zeros_like(batch[:2], dtype=torch.bool))


@pytest.mark.parametrize("setting", [("--cls-lesion-paste", "0.5"), ("--cls-anatomy-variants", "2")])
def test_pasted_lesions_and_anatomy_variants_change_the_batches_not_the_schedule(tiny_data, tmp_path, setting):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    plain = classify.main(tiny_args(tiny_data, out, "--n-viz", "0"))
    other = classify.main(tiny_args(tiny_data, str(tmp_path / "p"), "--n-viz", "0", *setting,
                                    "--checkpoint", os.path.join(out, "best_miram_mae.pth")))
    assert other["optimizer_steps"] == plain["optimizer_steps"]  # the same schedule (an epoch keeps its steps)
    assert [h["train_loss"] for h in other["history"]] != [h["train_loss"] for h in plain["history"]]


def test_classifier_variants_carry_their_masks_and_a_lesion_cut_out_of_view_unlabels_it():
    from dataset import SliceSet
    n, size = 6, 64
    images = torch.zeros(n, 1, size, size)
    images[:, :, 8:56, 8:56] = 0.6
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    masks[:3, :, 28:36, 28:36] = True
    images[masks] = 0.2
    labels = masks.flatten(1).any(1).float()
    has_mask = torch.tensor([True, True, False, True, True, True])  # slice 2: a pseudo-labelled tumor slice
    data = SliceSet(images, masks, labels, has_mask, [f"s{i}" for i in range(n)], ["a"] * n)
    cfg = load_config(None, {"MIRAM_CLS_ANATOMY_VARIANTS": "8", "MIRAM_SEED": "3"})
    bank, bank_labels, bank_masks = classify.anatomy_bank(cfg, data)
    assert bank.shape == (9 * n, 1, size, size) and bank_masks.shape == bank.shape and bank_masks.dtype == torch.bool
    assert torch.equal(bank[:n], images) and torch.equal(bank_labels[:n], labels)
    variant_labels = bank_labels[n:].view(8, n)
    outlined = variant_labels[:, [0, 1]]
    assert (outlined == bank_masks[n:].view(8, n, -1)[:, [0, 1]].any(-1).float()).all()  # the label is the mask's
    assert (outlined == 0).any() and (outlined == 1).any()  # some crops cut the lesion out, most keep it
    assert (variant_labels[:, 2] == 1).all()  # no outline known: the slice's own label
    assert (variant_labels[:, 3:] == 0).all()
    # a lesion stays where its mask says: darker than the brain around it in the variant's own contrast
    for k in range(8):
        for i in (0, 1):
            img, m = bank[(k + 1) * n + i, 0], bank_masks[(k + 1) * n + i, 0]
            if m.any():
                assert (img[m].mean() - img[~m][img[~m] > 0.05].median()).abs() > 0.1
    again, _, _ = classify.anatomy_bank(cfg, data)
    assert torch.equal(again, bank)  # drawn from SEED
    off, off_labels, off_masks = classify.anatomy_bank(load_config(None, {}), data)
    assert off is images and off_labels is labels and off_masks is masks


def test_a_validation_split_of_one_class_is_refused_naming_its_subjects(tmp_path):
    from conftest import write_tiny_dataset
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=4, per_subject=1)  # subj1 and subj3: tumor-free
    out = str(tmp_path / "o")
    train.main(tiny_args(data, out, "--val-subjects", "subj1"))
    with pytest.raises(MiramError, match=r"1 labelled slices \(subj1\) are all tumor-free: AUROC needs both"):
        classify.main(tiny_args(data, out, "--val-subjects", "subj1"))


def test_a_slice_without_a_known_outline_gets_no_patch_labels():
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 8:16, 16:24] = 1  # slice 0: patch 6; slice 1 (a pseudo-labelled tumor slice): outline unknown
    keep = torch.tensor([[6, 0, 1], [6, 0, 1]])
    scores = torch.tensor([[4.0, -4.0, -4.0], [9.0, 9.0, 9.0]], requires_grad=True)
    outlined = torch.tensor([True, False])
    loss = classify.patch_supervision(scores, masks, keep, None, 8, outlined=outlined)
    assert loss < 0.05  # slice 1's scores, all wrong for an empty mask, do not count
    loss.backward()
    assert scores.grad[1].abs().sum() == 0 and scores.grad[0].abs().sum() > 0


def test_pseudo_labels_are_the_teachers_surest_in_the_labelled_ratio():
    from dataset import SliceSet
    n = 10
    truth = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.float32)
    masks = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    masks[truth > 0, :, 2:4, 2:4] = True
    has_mask = torch.tensor([True] * 9 + [False])  # the last slice has no mask file: its truth is unknown
    pool = SliceSet(torch.rand(n, 1, 8, 8), masks, truth, has_mask, [f"s{i}" for i in range(n)], ["a"] * n)
    probs = np.array([0.9, 0.8, 0.2, 0.6, 0.1, 0.3, 0.7, 0.05, 0.4, 0.95])
    picked, record = classify.pseudo_labelled(pool, probs, 0.6, tumor_ratio=1 / 3)
    # 6 slices, 2 of them tumor: the two likeliest (s9, s0) and the four least likely (s7, s4, s2, s5)
    assert sorted(zip(picked.names, picked.labels.tolist())) == [
        ("s0", 1.0), ("s2", 0.0), ("s4", 0.0), ("s5", 0.0), ("s7", 0.0), ("s9", 1.0)]
    assert not picked.masks.any()  # no outline is known from a pseudo-label
    assert picked.has_mask.tolist() == (picked.labels == 0).tolist()  # a tumor-free slice's empty mask is right
    # scored against the masks where they exist: s2 is a tumor slice labelled tumor-free; s9 has no mask
    assert record["n_with_masks"] == 5 and record["correct"] == pytest.approx(4 / 5)
    assert record["tumor_correct"] == 1.0 and (record["n_labelled"], record["n_tumor"]) == (6, 2)


def test_self_training_runs_a_teacher_then_a_student_and_resumes(tiny_data, tmp_path):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    flags = ("--n-viz", "0", "--cls-label-fraction", "0.5", "--cls-pseudo-labels", "1")
    # interrupted after the teacher's first epoch, then run again: the teacher finishes, the student trains
    assert classify.main(tiny_args(tiny_data, out, *flags, "--stop-after", "1")) == {}
    assert os.path.isfile(os.path.join(out, "classifier_checkpoint_teacher.pth"))
    assert not os.path.isfile(os.path.join(out, "best_tumor_classifier.pth"))
    m = classify.main(tiny_args(tiny_data, out, *flags))
    st = m["self_training"]
    labelled = m["n_train_slices"]
    assert st["n_labelled"] == st["pool"] > 0 and st["n_with_masks"] == st["pool"]  # every tiny slice has a mask
    teacher = engine.read_history(os.path.join(out, "classifier_log_teacher.jsonl"))
    assert len(teacher) == 2 and st["teacher"]["optimizer_steps"] == teacher[-1]["step"]
    per_epoch = [engine.steps_in_epoch(n, 4, 1) for n in (labelled, labelled + st["n_labelled"])]
    assert len(m["history"]) == max(1, round(2 * per_epoch[0] / per_epoch[1]))  # the teacher's steps, more slices
    assert m["optimizer_steps"] == teacher[-1]["step"] + m["history"][-1]["step"]
    # the classifier is whichever of teacher and student has the lower validation loss, both kept
    losses = {who: st[who]["loss"] for who in ("teacher", "student")}
    assert st["kept"] == min(losses, key=losses.get)
    assert st["student"]["auroc"] == min(m["history"], key=lambda h: h["val_loss"])["val_auroc"]
    with open(os.path.join(out, "best_tumor_classifier.pth"), "rb") as f, open(st[st["kept"]]["checkpoint"], "rb") as g:
        assert f.read() == g.read()
    assert os.path.isfile(os.path.join(out, "best_tumor_classifier_student.pth"))
    # a classifier trained another way is not resumed as this one
    with pytest.raises(MiramError, match="pseudo_labels"):
        classify.main(tiny_args(tiny_data, out, "--n-viz", "0", "--cls-label-fraction", "0.5"))


@pytest.mark.parametrize("teacher_loss, kept", [(0.4, "teacher"), (0.6, "student")])
def test_the_lower_validation_loss_of_teacher_and_student_is_the_classifier(tmp_path, teacher_loss, kept):
    files = {who: tmp_path / f"{who}.pth" for who in ("teacher", "student")}
    for who, path in files.items():
        path.write_bytes(who.encode())
    record = {"teacher": {"checkpoint": str(files["teacher"]), "loss": teacher_loss},
              "student": {"checkpoint": str(files["student"]), "loss": 0.5}}
    final = tmp_path / "best_tumor_classifier.pth"
    final.write_bytes(b"an earlier run's")
    assert classify.keep_the_better(record, str(final)) == str(final)
    assert record["kept"] == kept and final.read_bytes() == kept.encode()
    assert files["teacher"].read_bytes() == b"teacher" and files["student"].read_bytes() == b"student"

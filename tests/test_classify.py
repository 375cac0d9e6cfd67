import json
import os

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

import classify
import train
from config import load_config
from conftest import tiny_args
from dataset import load_split


def test_labels_from_masks_and_split_disjoint(tiny_data):
    cfg = load_config(environ={"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": tiny_data})
    tr, va = load_split(cfg, quiet=True)
    assert set(tr.subjects).isdisjoint(va.subjects)
    for s in (tr, va):
        assert torch.equal(s.labels > 0, s.masks.flatten(1).any(1))


def test_binary_metrics_against_sklearn():
    probs = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    m = classify.binary_metrics(probs, labels, 0.5)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["confusion_matrix"] == [[2, 2], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(f1_score(labels, probs >= 0.5)) and m["accuracy"] == pytest.approx(4 / 7)


def test_rollout_on_a_known_stack():
    eye = torch.eye(3)[None, None]  # attention to self only: rollout is the identity
    assert torch.allclose(classify.attention_rollout([eye, eye]), torch.eye(3)[None])
    # one block, all attention to token 0: 0.5*A + 0.5*I, rows normalised
    a = torch.zeros(1, 2, 3, 3)
    a[..., 0] = 1
    r = classify.attention_rollout([a])[0]
    expect = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    assert torch.allclose(r, expect)
    # two such blocks compose by matrix product
    assert torch.allclose(classify.attention_rollout([a, a])[0], expect @ expect)


def test_localization_measures():
    heat = np.zeros((1, 4, 4))
    heat[0, 0, 0], heat[0, 3, 3] = 0.75, 0.25
    tumor = np.zeros((1, 4, 4), bool)
    tumor[0, :2, :2] = True
    mass, hit = classify.localization(heat, tumor)
    assert mass[0] == pytest.approx(0.75) and hit[0] == 1.0
    up = classify.upsample_heatmaps(np.arange(4.0).reshape(1, 2, 2), 8)
    assert up.shape == (1, 8, 8) and up.sum() == pytest.approx(1.0) and up[0, -1, -1] == up.max()


def test_layer_decay_gives_the_encoder_less():
    from config import ModelConfig
    from models import TumorClassifier
    m = TumorClassifier(ModelConfig(img_size=32, embed_dim=16, depth=2, num_heads=2))
    groups = classify.layer_decay_groups(m, 1.0, 0.5, 0.05)
    scales = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scales[id(m.head[0].weight)] == 1.0
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
    for k in ("auroc", "accuracy", "sensitivity", "specificity", "f1", "threshold", "confusion_matrix"):
        assert k in saved
    assert set(saved["localization"]) == {"last_block", "rollout"}
    assert 0 <= saved["localization"]["rollout"]["mass_inside"] <= 1
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
    assert 0 <= r["probability"] <= 1 and os.path.isfile(r["heatmap"])
    assert "p(tumor)" in capsys.readouterr().out

import dataclasses
"""The one training loop: every setting means the same thing in each of the three trainings."""
import json
import math
import os

import pytest
import torch

import classify
import engine
import train
from config import MiramError, ModelConfig, load_config
from conftest import enhance_args, tiny_args
from dataset import load_split
from models import MIRAM


def logged_steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def test_accum_steps_counts_the_same_in_all_three_trainings(tiny_data, tmp_path):
    out = str(tmp_path / "o")
    common = tiny_args(tiny_data, out, "--accum-steps", "2")
    train.main(common + ["--n-epochs", "2", "--inpaint-epochs", "1"])
    train.main(common + ["--n-epochs", "2", "--inpaint-epochs", "1", "--inpaint"])
    classify.main(common + ["--cls-epochs", "1", "--n-viz", "0"])
    cfg = load_config(environ={"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": tiny_data})
    n_train = len(load_split(cfg, quiet=True)[0])
    per_epoch = {"train_log.jsonl": n_train, "inpaint_log.jsonl": n_train * cfg.INPAINT_COPIES,
                 "classifier_log.jsonl": n_train}
    for log, items in per_epoch.items():
        steps = math.ceil(math.ceil(items / cfg.BATCH_SIZE) / 2)  # micro-batches of 4, two per step
        got = logged_steps(os.path.join(out, log))
        assert got == [steps * (e + 1) for e in range(len(got))], log


def test_learning_rate_scales_with_the_batch_that_really_happens():
    cfg = load_config(environ={"MIRAM_BATCH_SIZE": "16", "MIRAM_ACCUM_STEPS": "2"})
    assert cfg.scaled_lr(1e-3, world_size=2) == pytest.approx(1e-3 * 64 / 16)
    # a training set smaller than one batch: the step sees the whole set, not BATCH_SIZE images
    assert cfg.scaled_lr(1e-3, world_size=1, n_train=4) == pytest.approx(1e-3 * 4 * 2 / 16)


def test_layer_decay_and_weight_decay_groups():
    m = MIRAM(ModelConfig(img_size=32, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16,
                          decoder_depth=1, decoder_num_heads=2))
    groups = engine.param_groups(m, 0.05, lambda name: None if name.startswith("decoder") else 1.0)
    grouped = {id(p): g for g in groups for p in g["params"]}
    assert not m.decoder_embed.weight.requires_grad and id(m.decoder_embed.weight) not in grouped
    assert grouped[id(m.encoder.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    assert grouped[id(m.encoder.blocks[0].attn.qkv.bias)]["weight_decay"] == 0.0
    assert grouped[id(m.encoder.cls_token)]["weight_decay"] == 0.0


class NanTask(engine.Task):
    name, lr_setting, epochs, n_train = "probe", "SOME_LR", 1, 4

    def __init__(self, out, model):
        self.checkpoint, self.best, self.log = (os.path.join(out, n) for n in ("c.pth", "b.pth", "l.jsonl"))
        self.model = model

    def batch(self, gidx, mine, gen):
        return torch.rand(len(gidx), 1, 32, 32, generator=gen)

    def forward(self, net, batch):
        return net(batch)

    def loss(self, out, batch):
        return out.loss * float("nan"), {"loss": float("nan")}


def test_non_finite_loss_stops_naming_the_phase_and_its_learning_rate(tmp_path):
    cfg = load_config(environ={"MIRAM_PRESET": "tiny"})
    model = MIRAM(ModelConfig(img_size=32, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                              decoder_depth=1, decoder_num_heads=2))
    with engine.Distributed() as dist, pytest.raises(MiramError, match="probe epoch 1, batch 1: lower SOME_LR"):
        engine.fit(NanTask(str(tmp_path), model), model, cfg, dist, torch.device("cpu"))
    assert not os.path.exists(tmp_path / "c.pth")  # nothing half-trained is saved


def test_scripts_print_the_settings_they_run_with_not_the_ones_asked_for(tiny_data, tmp_path, capsys, monkeypatch):
    import enhance
    import evaluate
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))  # a 64-pixel model
    scan = os.path.join(tiny_data, "HR", "subj0_000.tif")
    capsys.readouterr()
    for extra in (["--n-viz", "0", "--cls-epochs", "1"], ["--predict", scan]):
        classify.main(tiny_args(tiny_data, out, "--img-size", "96", *extra))  # the checkpoint's 64 wins
        printed = capsys.readouterr().out
        assert "IMG_SIZE=64" in printed and "IMG_SIZE=96" not in printed, extra
    # scripts that take the architecture from a checkpoint offer no flag for it, and print the model's
    monkeypatch.setenv("MIRAM_IMG_SIZE", "96")
    with pytest.raises(SystemExit):
        evaluate.main(tiny_args(tiny_data, out, "--img-size", "96"))
    capsys.readouterr()
    evaluate.main(tiny_args(tiny_data, out, "--n-samples", "1"))
    enhance.main(enhance_args(out, "--input", scan, "--output", str(tmp_path / "r.tif")))
    printed = capsys.readouterr().out
    assert "IMG_SIZE=96" not in printed and printed.count("model: 64 px") == 2


def test_inpainting_damages_the_slices_and_their_anatomy_variants_in_turn():
    from augment import anatomy_variants
    from dataset import SliceSet
    n = 3
    images = torch.rand(n, 1, 32, 32) * 0.8
    data = SliceSet(images, torch.zeros(n, 1, 32, 32, dtype=torch.bool), torch.zeros(n), torch.zeros(n, dtype=torch.bool),
                    [f"s{i}" for i in range(n)], ["a"] * n)
    cfg = load_config([], {"MIRAM_PRESET": "tiny", "MIRAM_INPAINT_COPIES": "4", "MIRAM_ANATOMY_VARIANTS": "0"})
    plain, copies = train.damage_sources(data, cfg)
    assert copies == 4 and torch.equal(torch.from_numpy(plain), images)
    cfg = dataclasses.replace(cfg, ANATOMY_VARIANTS=2)
    sources, copies = train.damage_sources(data, cfg)
    bank, _ = anatomy_variants(images, 2, cfg.SEED)
    assert copies == 1 and len(sources) == n * 4  # the same count of damaged regions
    for i in range(n):  # slice i's copies: itself, variant 1, variant 2, itself again
        for c in range(4):
            assert torch.equal(torch.from_numpy(sources[i * 4 + c]), bank[(c % 3) * n + i])

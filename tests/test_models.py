import copy
import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import hardware
import adaptation
import models
from config import MiramError, ModelConfig
from losses import masked_mse
from models import MIRAM, patchify, unpatchify


TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def tiny_model(**kw):
    torch.manual_seed(0)
    return MIRAM(ModelConfig(**{**TINY, **kw})).eval()


def test_shapes_and_exactly_49_visible():
    m = tiny_model()  # 224x224, patch 16 -> 196 patches
    x = torch.rand(2, 1, 224, 224)
    out = m(x)
    assert out.pred_fine.shape == (2, 196, 256) and out.pred_coarse.shape == (2, 196, 64)
    assert out.mask.shape == (2, 196)
    assert (out.mask == 0).sum(1).tolist() == [49, 49] == [round(196 * 0.25)] * 2
    latent = m.encoder(x, mask_ratio=0.75)[0]
    assert latent.shape == (2, 1 + 49, 32)
    assert torch.isfinite(out.loss) and out.loss.ndim == 0


def adapted_fills(model, x, noise, steps, lr=1e-3, seed=0):
    return adaptation.reconstruct_adapted(model, x, noise, 0.75, steps, lr, [seed + i for i in range(len(x))])


def test_adaptation_reads_only_the_visible_patches_of_its_image(monkeypatch):
    m = tiny_model(img_size=64)
    x = torch.rand(2, 1, 64, 64)
    noise = models.mask_noise(2, m.encoder.num_patches, 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fine, coarse, mask = adapted_fills(m, x, noise, steps=3)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # a copy was adapted
    plain = m.reconstruct(x, noise, 0.75)
    assert torch.equal(mask, plain[2]) and not torch.allclose(fine, plain[0])
    hidden = unpatchify(mask[..., None].expand(-1, -1, 16 * 16), 16, 1).bool()
    changed = torch.where(hidden, torch.rand_like(x), x)  # other pixels where they were hidden
    again = adapted_fills(m, changed, noise, steps=3)
    assert torch.equal(again[0], fine) and torch.equal(again[1], coarse)
    # the batch around an image does not change its fill (beyond float rounding: its copy steps batched with
    # the others); its seed does
    alone = adapted_fills(m, x[1:], noise[1:], steps=3, seed=1)
    assert torch.allclose(alone[0], fine[1:], atol=1e-5)
    assert not torch.equal(adapted_fills(m, x[1:], noise[1:], steps=3, seed=7)[0], fine[1:])
    monkeypatch.setattr(adaptation, "ADAPT_PASS_BYTES", 1)  # one image a pass: a model too large for more
    assert torch.allclose(adapted_fills(m, x, noise, steps=3)[0], fine, atol=1e-5)
    assert torch.allclose(adapted_fills(m, x, noise, steps=0)[0], plain[0], atol=1e-6)  # one image a batch
    # the steps under autocast (bf16): the same fill to bf16's precision
    in_bf16 = adaptation.reconstruct_adapted(m, x, noise, 0.75, 3, 1e-3, [0, 1], amp=True)[0]
    assert torch.allclose(in_bf16, fine, atol=0.05) and not torch.equal(in_bf16, fine)


def test_adaptation_lowers_the_loss_on_the_image_it_adapts_to():
    m = tiny_model(img_size=64)
    x = torch.rand(1, 1, 64, 64)
    visible = torch.zeros(16, dtype=torch.bool)
    visible[:8] = True

    def loss_on_visible(model):  # each visible patch restored from the other seven
        total = 0.0
        for held in range(8):
            noise = torch.arange(16.0)[None].clone()
            noise[0, held] = 100.0
            out = model(x, noise, 1 - 7.5 / 16)
            total += masked_mse(out.pred_fine, patchify(x, 16), out.mask * visible.float()).item()
        return total

    with torch.no_grad():
        start = loss_on_visible(m)
        weights = adaptation.adapt_to_images(m, x, visible[None], 20, 1e-3, [torch.Generator().manual_seed(0)])
        adapted = copy.deepcopy(m)
        adapted.load_state_dict({name: w[0] for name, w in weights.items()}, strict=False)
        assert loss_on_visible(adapted) < 0.5 * start


def test_same_noise_same_mask_and_smallest_noise_kept():
    m = tiny_model()
    x = torch.rand(3, 1, 224, 224)
    noise = torch.rand(3, 196)
    a, b = m(x, noise), m(x, noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pred_fine, b.pred_fine)
    kept = noise.argsort(1)[:, :49]
    assert torch.all(torch.gather(a.mask, 1, kept) == 0)
    assert not torch.equal(m(x, torch.rand(3, 196)).mask, a.mask)


@pytest.mark.parametrize("p", [16, 8])
def test_patchify_roundtrip_row_major(p):
    x = torch.rand(2, 1, 224 if p == 16 else 112, 224 if p == 16 else 112)
    patches = patchify(x, p)
    assert patches.shape == (2, 196, p * p)
    assert torch.equal(unpatchify(patches, p, 1), x)
    # patch 1 is the second patch of the first row; its pixels are row-major
    assert torch.equal(patches[0, 1], x[0, 0, :p, p:2 * p].reshape(-1))


def test_loss_is_masked_mse_of_input_and_avg_pooled_input():
    m = tiny_model()
    x = torch.rand(2, 1, 224, 224)
    noise = torch.rand(2, 196)
    out = m(x, noise)
    mask = out.mask.bool()
    tf = patchify(x, 16)
    tc = patchify(F.avg_pool2d(x, 2), 8)
    # independent: loop over masked patches only
    fine = torch.stack([((out.pred_fine[b, i] - tf[b, i]) ** 2).mean() for b in range(2) for i in range(196)
                        if mask[b, i]]).mean()
    coarse = torch.stack([((out.pred_coarse[b, i] - tc[b, i]) ** 2).mean() for b in range(2) for i in range(196)
                          if mask[b, i]]).mean()
    assert out.loss_fine.item() == pytest.approx(fine.item(), rel=1e-5)
    assert out.loss_coarse.item() == pytest.approx(coarse.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(fine.item() + 0.5 * coarse.item(), rel=1e-5)
    # coarse target is the 2x2 average pool
    fine_t, coarse_t = m.targets(x)
    pooled = x.reshape(2, 1, 112, 2, 112, 2).mean(dim=(3, 5))
    assert torch.allclose(unpatchify(coarse_t, 8, 1), pooled, atol=1e-6)


def test_loss_ignores_visible_patches():
    pred, target = torch.rand(2, 10, 4), torch.rand(2, 10, 4)
    mask = torch.zeros(2, 10)
    mask[:, :3] = 1
    before = masked_mse(pred, target, mask)
    pred2 = pred.clone()
    pred2[:, 3:] += 100.0
    assert masked_mse(pred2, target, mask).item() == before.item()
    pred3 = pred.clone()
    pred3[:, 0] += 1.0
    assert masked_mse(pred3, target, mask).item() != before.item()


def test_attention_readout_matches_the_block():
    m = tiny_model()
    x = torch.rand(2, 1, 224, 224)
    tokens, _, _, atts = m.encoder(x, return_attention="all")
    assert len(atts) == 2 and atts[-1].shape == (2, 2, 197, 197)
    assert torch.allclose(atts[-1].sum(-1), torch.ones(2, 2, 197), atol=1e-5)
    # the readout path computes what the fused block computes
    assert torch.allclose(tokens, m.encoder(x)[0], atol=1e-5)
    h = torch.randn(2, 197, 32)
    blk = m.encoder.blocks[0]
    out, a = models.block_with_attention(blk, h)
    assert torch.allclose(out, blk(h), atol=1e-5)
    # and the weights are the softmax of scaled q.k from the block's own projection
    q, k, _ = blk.attn.qkv(blk.norm1(h)).reshape(2, 197, 3, 2, 16).permute(2, 0, 3, 1, 4)
    assert torch.allclose(a, (q @ k.transpose(-2, -1) / 4).softmax(-1), atol=1e-6)
    # the last block's attention alone: the same tokens and the same attention as the "all" readout
    last_tokens, _, _, last_att = m.encoder(x, return_attention="last")
    assert len(last_att) == 1 and last_att[0].shape == (2, 2, 197, 197)
    assert torch.allclose(last_tokens, tokens, atol=1e-5)
    assert torch.allclose(last_att[0], atts[-1], atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
def test_fast_linear_matches_plain_linear_forward_and_backward(fast, monkeypatch):
    monkeypatch.setattr(hardware, "ONEDNN_LINEAR", fast and hardware.ONEDNN_LINEAR)
    torch.manual_seed(0)
    ref = torch.nn.Linear(24, 40)
    fl = hardware.FastLinear(24, 40)
    fl.load_state_dict(ref.state_dict())
    x1 = torch.randn(3, 7, 24, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    ref(x1).square().sum().backward()
    fl(x2).square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-4)
    assert torch.allclose(ref.weight.grad, fl.weight.grad, atol=1e-3)
    assert torch.allclose(ref.bias.grad, fl.bias.grad, atol=1e-4)


def test_tuned_model_trains_the_same():
    x, noise = torch.rand(2, 1, 64, 64), torch.rand(2, 16)
    a, b = tiny_model(img_size=64), tiny_model(img_size=64)
    hardware.tune_for(b, torch.device("cpu"), amp=False)
    la, lb = a.train()(x, noise).loss, b.train()(x, noise).loss
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-5)
    ga = a.encoder.blocks[0].mlp.fc1.weight.grad
    assert torch.allclose(ga, b.encoder.blocks[0].mlp.fc1.weight.grad, atol=1e-5)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_checkpoint_roundtrip_and_mismatch_refused(tmp_path):
    m = tiny_model(img_size=64)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.rand(1, 1, 64, 64)).loss.backward()
    opt.step()
    path = str(tmp_path / "c.pth")
    checkpoint.save_checkpoint(path, m, "mae", optimizer=opt, epoch=3, metrics={"val": 0.5})
    m2, state = checkpoint.build_from_checkpoint(path, "mae")
    assert state["epoch"] == 3 and state["metrics"]["val"] == 0.5
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    other = ModelConfig(**{**TINY, "img_size": 64, "depth": 3})
    with pytest.raises(MiramError, match="DEPTH: checkpoint 2 vs requested 3"):
        checkpoint.load_checkpoint(path, "mae", expected=other)
    with pytest.raises(MiramError, match="expected 'classifier'"):
        checkpoint.load_checkpoint(path, "classifier")
    # the MAE never reads the classifier's foreground threshold: no reason to refuse a resume
    threshold = ModelConfig(**{**TINY, "img_size": 64, "foreground_threshold": 0.2})
    assert checkpoint.load_checkpoint(path, "mae", expected=threshold)["epoch"] == 3
    clf_path = str(tmp_path / "clf.pth")
    checkpoint.save_checkpoint(clf_path, models.TumorClassifier(m.cfg), "classifier")
    with pytest.raises(MiramError, match="FOREGROUND_THRESHOLD: checkpoint 0.01 vs requested 0.2"):
        checkpoint.load_checkpoint(clf_path, "classifier", expected=threshold)
    with pytest.raises(MiramError, match="Model not found"):
        checkpoint.load_checkpoint(str(tmp_path / "missing.pth"))


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": _RunsCode(), "model_config": {}}, path)
    with pytest.raises(MiramError, match="refused to load"):
        checkpoint.load_checkpoint(str(path))
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "trunc.pth").write_bytes(path.read_bytes()[:50])
    with pytest.raises(MiramError, match="trunc.pth"):
        checkpoint.load_checkpoint(str(tmp_path / "trunc.pth"))


def test_classifier_reads_only_foreground_and_ignores_batch_padding():
    from models import TumorClassifier
    torch.manual_seed(0)
    m = TumorClassifier(ModelConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)).eval()
    x = torch.rand(2, 1, 32, 32)
    x[1, :, :16] = 0  # half blank: padded when batched with x[0]
    with torch.no_grad():
        batched = m(x)
        alone = torch.cat([m(x[:1]), m(x[1:])])
        keep, valid = m.foreground(x[1:])
        logits, atts, _, _, scores, _ = m.forward_with_attention(x[1:], "last")
        changed = x[1:].clone()
        changed[:, :, :16] = 0.005  # below the threshold: still background, same result
        assert keep.shape == (1, 8) and valid.all() and atts[0].shape[-1] == 9 and scores.shape == (1, 8)
        assert torch.allclose(m(changed), alone[1:], atol=1e-6)
        brighter = x[1:].clone()
        brighter[:, :, :16] = 0.5  # now foreground: read, and the result moves
        assert not torch.allclose(m(brighter), alone[1:], atol=1e-4)
    assert torch.allclose(batched, alone, atol=1e-5)
    # the logit pools the real patches' scores only: padding changes neither it nor the map
    keep, valid = m.foreground(x)
    assert not valid.all()
    with torch.no_grad():
        tokens = m.encoder(x, keep=keep, valid=valid)[0]
        scores = m.evidence(tokens[1:, 1:]).squeeze(-1)[valid[1:]]
        by_hand = torch.logsumexp(scores, 0) - math.log(len(scores))
        weights = models.evidence_weights(m.evidence(tokens[:, 1:]).squeeze(-1), valid)
    assert torch.allclose(batched[1], by_hand, atol=1e-5)
    assert torch.all(weights[~valid] == 0) and torch.allclose(weights.sum(1), torch.ones(2))


def test_embedding_only_kept_patches_equals_the_convolution():
    from models import Encoder
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(img_size=32, patch_size=8, in_chans=2, embed_dim=16, depth=1, num_heads=2))
    x = torch.rand(3, 2, 32, 32)
    keep = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
    full = enc.embed(x)  # every patch, as one matrix product
    conv = enc.patch_embed(x).flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:]  # the weights' own convolution
    assert torch.allclose(full, conv, atol=1e-5)
    assert torch.allclose(enc.embed(x, keep), torch.gather(full, 1, keep[..., None].expand(-1, -1, 16)), atol=1e-5)


def test_inpainter_starts_as_the_prefill_and_never_touches_pixels_outside_the_hole():
    torch.manual_seed(0)
    m = models.InpaintingMIRAM(ModelConfig(img_size=64, **TINY)).eval()
    prefilled = torch.rand(2, 1, 64, 64)
    weight = torch.zeros(2, 1, 64, 64)
    weight[:, :, 10:30, 20:45] = torch.rand(2, 1, 20, 25)
    with torch.no_grad():
        assert torch.equal(m(prefilled, weight), prefilled)  # zero-initialised correction
        torch.nn.init.normal_(m.correction_head.weight)  # a trained head: corrections inside only
        out = m(prefilled, weight)
    assert torch.equal(out[weight == 0], prefilled[weight == 0])
    assert not torch.allclose(out[weight > 0], prefilled[weight > 0])


def test_amp_runs_only_where_bf16_is_native_and_measured_faster(tmp_path, monkeypatch):
    cpu, said = torch.device("cpu"), []
    monkeypatch.setattr(hardware, "KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert hardware.resolve_amp(cpu, True, said.append) is False and "no native bf16" in said[0]
    assert hardware.resolve_amp(cpu, False, said.append) is False and len(said) == 1
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(hardware, "_time_bf16_block", lambda dim: 0.72)  # native, but slower (an Intel Xeon)
    assert hardware.resolve_amp(cpu, True, said.append, width=96) is False and "0.72x the speed of fp32" in said[1]
    monkeypatch.setattr(hardware, "_time_bf16_block", lambda dim: 2.0)
    assert hardware.resolve_amp(cpu, True, said.append, width=96) is False  # the machine's answer is kept
    assert hardware.resolve_amp(cpu, True, said.append, width=192) is True and len(said) == 3  # measured anew



def test_the_linear_kernel_is_measured_once_per_machine_then_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "KERNEL_CACHE", str(tmp_path / "kernels.json"))
    monkeypatch.setattr(hardware, "ONEDNN_LINEAR", True)
    timed = []
    monkeypatch.setattr(hardware, "_time_linear", lambda dim, tokens: timed.append(dim) or 1.10)
    model = tiny_model()
    hardware.tune_for(model, torch.device("cpu"), amp=False)
    assert timed == [32] and type(model.encoder.blocks[0].mlp.fc1) is torch.nn.Linear  # 1.10x: within the margin
    monkeypatch.setattr(hardware, "_time_linear", lambda dim, tokens: timed.append(dim) or 2.0)
    hardware.tune_for(model, torch.device("cpu"), amp=False)  # read back, not measured again
    assert timed == [32] and type(model.encoder.blocks[0].mlp.fc1) is torch.nn.Linear
    monkeypatch.setattr(hardware, "KERNEL_CACHE", str(tmp_path / "other.json"))  # another machine's cache
    hardware.tune_for(model, torch.device("cpu"), amp=False)
    assert timed == [32, 32] and type(model.encoder.blocks[0].mlp.fc1) is hardware.FastLinear
    # the same machine after a reboot (a VM may come back on other hardware): measured again, the new answer kept
    monkeypatch.setattr(hardware, "boot_id", lambda: "another boot")
    monkeypatch.setattr(hardware, "_time_linear", lambda dim, tokens: timed.append(dim) or 0.93)
    hardware.tune_for(model, torch.device("cpu"), amp=False)
    assert timed == [32, 32, 32] and type(model.encoder.blocks[0].mlp.fc1) is torch.nn.Linear
    hardware.tune_for(model, torch.device("cpu"), amp=False)  # and read back within that boot
    assert timed == [32, 32, 32]
    hardware.tune_for(model, torch.device("cpu"), amp=True)  # under bf16 autocast the plain linear serves
    assert type(model.encoder.blocks[0].mlp.fc1) is torch.nn.Linear


KEEP_PROBE = """
import os, sys, torch
import hardware
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
kept = hardware.keep_freed_memory()
x = torch.ones(5 << 20)  # 20 MB, every page touched
grown = resident()
del x
print(kept, grown - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow
def test_freed_memory_is_kept_for_the_next_step():
    """Under keep_freed_memory a freed 20 MB block stays with the process (glibc's default hands blocks this
    size back to the system, and the next step faults fresh pages in)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", KEEP_PROBE], capture_output=True, text=True, cwd=root, check=True)
    kept, returned = done.stdout.split()
    assert kept == "True" and int(returned) < (1 << 20)


def test_the_allocator_benchmark_times_a_training_step_in_its_child_process():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import allocator
    out = allocator.child("system", "demo", amp=False, steps=1, batch=2, threads=1)
    assert out["img_s"] > 0 and out["peak_mb"] > 50


def test_one_stalled_round_does_not_decide_a_kernel(monkeypatch):
    """The kernel choice takes the median of paired rounds: one round where the default path stalled
    (another process ran) does not make the candidate look 3x faster."""
    calls = {"default": 0}
    durations = []

    def default():
        calls["default"] += 1
        durations.append(3.0 if calls["default"] == 3 else 1.0)  # the second timed round stalls

    def candidate():
        durations.append(1.0)
    # perf_counter advances by the duration of what ran since the last reading
    state = {"t": 0.0}

    def perf_counter():
        if durations:
            state["t"] += durations.pop(0)
        return state["t"]
    monkeypatch.setattr(hardware.time, "perf_counter", perf_counter)
    assert hardware._paired_speedup(default, candidate, rounds=5) == pytest.approx(1.0)


def test_positions_read_at_another_size_span_the_pretrained_range():
    own = models.sincos_pos_embed_2d(32, 8)
    spread = models.sincos_pos_embed_2d(32, 14, span=8)
    assert torch.equal(models.sincos_pos_embed_2d(32, 8, span=8), own)
    # the corners of the 14x14 grid sit where the 8x8 grid's corners were; a middle row lies between two
    for a, b in ((1, 1), (14, 8), (14 * 13 + 1, 8 * 7 + 1), (14 * 14, 8 * 8)):
        assert torch.allclose(spread[a], own[b], atol=1e-6)
    assert not torch.allclose(spread[2], own[2])
    enc = models.Encoder(ModelConfig(**{**TINY, "img_size": 128, "pos_grid": 4}))
    assert torch.allclose(enc.pos_embed[0, -1], models.sincos_pos_embed_2d(TINY["embed_dim"], 4)[-1], atol=1e-6)


@pytest.mark.parametrize("cell", [8, 4])
def test_the_evidence_map_puts_each_patch_weight_on_the_cell_its_score_came_from(cell):
    """With 16-pixel patches the branch scores (16 / cell)^2 cells a patch and a patch takes its best cell's
    score: the map is on the cells' grid, each patch's weight on that cell, of two classes and of K alike."""
    from heatmaps import evidence_map
    n, side = 16 // cell, 64 // cell  # cells a patch side, cells a slice side
    for classes in (2, 3):
        cfg = ModelConfig(img_size=64, patch_size=16, embed_dim=16, depth=1, num_heads=2, conv_evidence=True,
                          conv_cell=cell, num_classes=classes)
        torch.manual_seed(0)
        m = models.TumorClassifier(cfg).eval()
        x = torch.rand(3, 1, 64, 64)
        with torch.no_grad():
            logits, scores, keep, valid, where = m(x, with_evidence=True)
            cells = m.conv_evidence.cells(x)  # (B, classes - 1, side, side)
            maps = evidence_map(scores, where, valid, m.map_grid)
        assert cells.shape[-1] == side and m.map_grid == side and maps.shape == (3, side, side)
        assert torch.allclose(maps.flatten(1).sum(1), torch.ones(3), atol=1e-5)
        for b in range(3):
            c = cells[b, 0 if classes == 2 else int(logits[b, 1:].argmax())]  # the shown class's cells
            for k, patch in enumerate(keep[b].tolist()):
                row, col = divmod(patch, 4)
                r, q = divmod(int(where[b, k]), side)
                assert r // n == row and q // n == col  # in its own patch
                assert c[r, q] == c[n * row:n * row + n, n * col:n * col + n].max()  # the cell that won
            assert (maps[b] > 0).sum() == len(keep[b])  # one cell a patch carries its weight
    with pytest.raises(MiramError, match="CLS_CONV_CELL: must be 8, 4 or 2, got 3"):
        ModelConfig(conv_cell=3)


def test_the_convolutional_evidence_adds_to_each_patch_score_and_is_refused_where_absent(tmp_path):
    cfg = ModelConfig(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, conv_evidence=True)
    torch.manual_seed(0)
    m = models.TumorClassifier(cfg).eval()
    x = torch.rand(2, 1, 32, 32)
    x[1, :, :16] = 0  # half blank: padded when batched with x[0]
    with torch.no_grad():
        logits, _, keep, valid, scores, _ = m.forward_with_attention(x, None)
        tokens = m.encoder(x, keep=keep, valid=valid)[0]
        head = m.evidence(tokens[:, 1:]).squeeze(-1)
        cells = m.conv_evidence.cells(x)  # (B, 1, 4, 4): 8-pixel cells, one per patch here
        alone = torch.cat([m(x[:1]), m(x[1:])])
    assert cells.shape == (2, 1, 4, 4)
    assert torch.allclose(scores, head + torch.gather(cells.flatten(1), 1, keep), atol=1e-5)
    assert torch.allclose(logits, alone, atol=1e-5)  # the padding of a batch changes nothing
    path = str(tmp_path / "clf.pth")
    checkpoint.save_checkpoint(path, m, "classifier")
    assert checkpoint.build_from_checkpoint(path, "classifier")[0].conv_evidence is not None
    with pytest.raises(MiramError, match="CONV_EVIDENCE: checkpoint True vs requested False"):
        checkpoint.load_checkpoint(path, "classifier", expected=dataclasses.replace(cfg, conv_evidence=False))
    # a checkpoint written before these settings existed is the model with their defaults
    old = str(tmp_path / "old.pth")
    plain = models.TumorClassifier(dataclasses.replace(cfg, conv_evidence=False))
    checkpoint.save_checkpoint(old, plain, "classifier")
    state = torch.load(old, weights_only=True)
    for key in ("pos_grid", "conv_evidence", "num_classes"):
        del state["model_config"][key]
    torch.save(state, old)
    assert checkpoint.load_checkpoint(old, "classifier", expected=plain.cfg)["kind"] == "classifier"
    with pytest.raises(MiramError, match="NUM_CLASSES: checkpoint 2 vs requested 4"):
        checkpoint.load_checkpoint(old, "classifier", expected=dataclasses.replace(plain.cfg, num_classes=4))
    with pytest.raises(MiramError, match="CLS_CONV_EVIDENCE: needs PATCH_SIZE a multiple of 8"):
        ModelConfig(img_size=36, patch_size=12, embed_dim=16, depth=2, num_heads=2, conv_evidence=True)


def test_under_bf16_autocast_the_blocks_read_bf16_tokens_and_the_loss_stays_close():
    torch.manual_seed(0)
    model = tiny_model(img_size=64)
    imgs, noise = torch.rand(2, 1, 64, 64), torch.rand(2, 16)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
             for b in [*model.encoder.blocks, *model.decoder_blocks]]
    with torch.no_grad():
        full = model(imgs, noise).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(imgs, noise).loss
    for h in hooks:
        h.remove()
    n = len(model.encoder.blocks) + len(model.decoder_blocks)
    assert seen == [torch.float32] * n + [torch.bfloat16] * n  # fp32 outside autocast: nothing changes there
    assert abs(float(low) - float(full)) < 0.03 * float(full)


def test_the_training_flops_counted_are_the_models_and_leave_it_as_it_was():
    m = tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fused = [x.fused_attn for x in m.modules() if hasattr(x, "fused_attn")]
    gflop = hardware.training_gflop_per_image(m, torch.device("cpu"))
    # the encoder's matrix products alone, forward and backward (3x), are a floor the count must exceed
    c = m.cfg
    visible, dim = c.num_visible + 1, c.embed_dim
    floor = 3 * 2 * c.depth * visible * (4 * dim * dim + 2 * dim * int(dim * c.mlp_ratio)) / 1e9
    assert floor < gflop < 20 * floor
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())
    assert [x.fused_attn for x in m.modules() if hasattr(x, "fused_attn")] == fused

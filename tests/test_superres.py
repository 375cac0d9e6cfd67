"""2x super-resolution: the tiled enlargement, the fine-tune and enhance.py --mode superres end to end."""
import os

import nibabel as nib
import numpy as np
import pytest
import tifffile

import enhance
import superres
import train
from conftest import enhance_args, tiny_args, write_tiny_dataset


def test_tiles_cover_the_slice_and_an_identity_model_gives_the_bicubic_enlargement():
    assert superres.tile_starts(100, 64, 48) == [0, 36] and superres.tile_starts(40, 64, 48) == [0]
    img = np.random.default_rng(0).random((45, 70))
    identity = lambda tiles: tiles  # noqa: E731  (the untrained model: its head starts at zero)
    out = superres.enlarge(identity, img, 32, overlap=8)
    assert out.shape == (90, 140) and np.allclose(out, superres.upsample(img), atol=1e-6)
    # each tile is corrected on its own, and the blend shows no tile's border
    shifted = superres.enlarge(lambda tiles: tiles + 0.25, img, 32, overlap=8)
    assert np.allclose(shifted, superres.upsample(img) + 0.25, atol=1e-6)


def test_images_without_anatomy_show_a_model_that_paints_into_them():
    shown = superres.phantoms(64)
    assert set(shown) == {"constant", "phantom"} and all(0 <= v.min() and v.max() <= 1 for v in shown.values())
    assert len(np.unique(shown["phantom"])) > 10 and np.ptp(shown["constant"]) == 0
    honest = superres.phantom_scores(lambda tiles: tiles, 32)  # bicubic itself: no change, no loss
    assert all(m["max_abs_change"] < 1e-6 and abs(m["psnr"] - m["psnr_bicubic"]) < 1e-6
               for kinds in honest.values() for m in kinds.values())
    regions = honest["phantom"]["area"]["regions"]
    assert set(regions) == {"discs and ramp", "stripes 2 px", "stripes 4 px", "stripes 8 px"}
    assert regions["stripes 2 px"]["psnr_bicubic"] < regions["stripes 8 px"]["psnr_bicubic"]  # finer: harder

    def painter(tiles):  # adds a bright blob to every tile, as a model that learned brains might
        yy, xx = np.mgrid[:tiles.shape[-2], :tiles.shape[-1]]
        return tiles + 0.3 * (((yy - 16) ** 2 + (xx - 16) ** 2) < 36)
    painted = superres.phantom_scores(painter, 32)
    assert all(m["psnr"] < m["psnr_bicubic"] - 3 and m["max_abs_change"] > 0.2
               for kinds in painted.values() for m in kinds.values())


def test_the_super_resolver_leaves_a_flat_image_as_bicubic_leaves_it_and_reads_miram_only_where_asked():
    import torch

    from config import ModelConfig
    from upscaler import SuperResMIRAM
    cfg = ModelConfig(img_size=32, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                      decoder_num_heads=2)
    torch.manual_seed(0)
    for features in (4, 0):
        model = SuperResMIRAM(ModelConfig(**{**cfg.to_dict(), "superres_features": features})).eval()
        assert (model.mae is None) == (features == 0)
        x = torch.rand(2, 1, 32, 32)
        assert torch.equal(model(x), x)  # untrained: the interpolation itself
        for p in model.detail.parameters():  # any weights: a flat image gets no detail, nor a flat patch of one
            torch.nn.init.normal_(p, std=0.1)
        flat = torch.full((1, 1, 32, 32), 0.4)
        assert torch.allclose(model(flat), flat, atol=1e-5)
        assert not torch.allclose(model(x), x)


def test_held_out_slices_are_scored_whole_against_each_interpolation():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :52]
    head = ((yy - 30) ** 2 / 26 ** 2 + (xx - 26) ** 2 / 22 ** 2 < 1) * (0.5 + 0.3 * np.sin(xx / 3.0))
    empty = np.zeros((60, 52))  # no head: not scored
    scores, example = superres.held_out_scores(lambda tiles: tiles, [head, empty, head + 0.01 * rng.random(head.shape)], 32)
    assert scores["n_slices"] == 2 and set(scores) == {"n_slices", "kspace", "area"}
    for kind in ("kspace", "area"):
        # the identity model is bicubic interpolation itself; Lanczos differs from it
        assert abs(scores[kind]["model"]["psnr"] - scores[kind]["bicubic"]["psnr"]) < 1e-6
        assert scores[kind]["lanczos"]["psnr"] != scores[kind]["bicubic"]["psnr"]
        assert 0 < scores[kind]["model"]["ssim"] <= 1
    m = superres.margins(scores)
    assert abs(m["psnr_margin_bicubic_db"]) < 1e-6 and example["truth"].shape == (60, 52)
    assert example["model"].shape == (60, 52) and example["low"].shape == (30, 26)


def test_the_fine_tune_and_the_mode_enlarge_a_scan_in_its_own_format(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "o")
    train.main(tiny_args(data, out))
    for wrong in (["--from-scratch"], ["--cnn"], ["--superres", "--cnn", "--checkpoint", "x.pth"]):
        with pytest.raises(SystemExit):  # the comparisons' flags belong to --superres, a checkpoint to the fine-tune
            train.main(tiny_args(data, out, *wrong))
    train.main(tiny_args(data, out, "--superres"))
    train.main(tiny_args(data, out, "--superres", "--cnn"))
    assert os.path.isfile(os.path.join(out, "best_miram_superres.pth"))
    import json
    metrics = json.load(open(os.path.join(out, "superres_metrics.json")))
    assert set(metrics["phantoms"]) == {"constant", "phantom"} and set(metrics["phantoms"]["phantom"]) == {"kspace", "area"}
    held_out = metrics["held_out"]["validation"]
    assert held_out["n_slices"] >= 1 and {"psnr_margin_bicubic_db", "psnr_margin_lanczos_db", "ssim"} <= set(held_out)
    assert set(held_out["kspace"]) == {"model", "bicubic", "lanczos"}
    assert os.path.isfile(os.path.join(out, "miram_superres_sample.png"))
    cnn = json.load(open(os.path.join(out, "superres_metrics_cnn.json")))
    assert cnn["variant"] == "cnn" and cnn["held_out"]["validation"]["n_slices"] == held_out["n_slices"]
    scan = os.path.join(data, "HR", "subj1_000.tif")
    result = str(tmp_path / "x2.tif")
    enhance.main(enhance_args(out, "--input", scan, "--output", result, "--mode", "superres"))
    img, big = tifffile.imread(scan), tifffile.imread(result)
    assert big.shape == (2 * img.shape[0], 2 * img.shape[1]) and big.dtype == img.dtype
    # a volume: twice the pixels in-plane, the voxel size halved there
    vol = np.stack([tifffile.imread(os.path.join(data, "HR", f"subj0_00{i}.tif")) for i in range(3)], -1)
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([1.0, 1.0, 3.0, 1.0])), tmp_path / "v.nii.gz")
    enhance.main(enhance_args(out, "--input", str(tmp_path / "v.nii.gz"), "--output", str(tmp_path / "v2.nii.gz"),
                              "--mode", "superres"))
    v2 = nib.load(tmp_path / "v2.nii.gz")
    assert v2.shape == (144, 160, 3) and np.allclose(v2.header.get_zooms(), (0.5, 0.5, 3.0))
    # export_deploy.py exports it (int8 kept only within its PSNR budget) and times a slice enlarged; ONNX
    # Runtime then gives the same enlargement
    import export_deploy
    report = export_deploy.main(tiny_args(data, out, "--iters", "2", "--warmup", "0", "--skip-spec", "--skip-peer",
                                          "--max-images", "8", "--superres-side", "64", "--threads", "1"))
    cost = report["accuracy"]["superres"]
    assert cost["int8_kept"] == (cost["psnr_drop_db"] <= cost["limit_db"])
    assert os.path.isfile(os.path.join(out, "miram_superres_int8.onnx")) == cost["int8_kept"]
    timed = report["superres_slice"]
    assert timed["side"] == 64 and timed["ort-fp32"]["p50_ms"] > 0 and timed["torch-fp32"]["p50_ms"] > 0
    onnx_result = str(tmp_path / "x2_onnx.tif")
    enhance.main(enhance_args(out, "--input", scan, "--output", onnx_result, "--mode", "superres", "--backend", "onnx"))
    assert np.abs(tifffile.imread(onnx_result).astype(int) - big.astype(int)).max() <= 1  # uint8 rounding
    # bench/superres_latency.py: the same timing on a checkpoint alone
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import superres_latency
    superres_latency.main(["--checkpoint", os.path.join(out, "best_miram_superres.pth"), "--iters", "4", "--threads", "1",
                           "--side", "64", "--json", str(tmp_path / "latency.json")])
    timed = json.load(open(tmp_path / "latency.json"))
    assert timed["side"] == 64 and {"ort-fp32", "ort-int8", "torch-fp32"} <= set(timed)

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

    def painter(tiles):  # adds a bright blob to every tile, as a model that learned brains might
        yy, xx = np.mgrid[:tiles.shape[-2], :tiles.shape[-1]]
        return tiles + 0.3 * (((yy - 16) ** 2 + (xx - 16) ** 2) < 36)
    painted = superres.phantom_scores(painter, 32)
    assert all(m["psnr"] < m["psnr_bicubic"] - 3 and m["max_abs_change"] > 0.2
               for kinds in painted.values() for m in kinds.values())


def test_the_fine_tune_and_the_mode_enlarge_a_scan_in_its_own_format(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "o")
    train.main(tiny_args(data, out))
    with pytest.raises(SystemExit):  # the comparison's flag belongs to --superres
        train.main(tiny_args(data, out, "--from-scratch"))
    train.main(tiny_args(data, out, "--superres"))
    assert os.path.isfile(os.path.join(out, "best_miram_superres.pth"))
    assert os.path.isfile(os.path.join(out, "superres_metrics.json"))
    import json
    phantom = json.load(open(os.path.join(out, "superres_metrics.json")))["phantoms"]
    assert set(phantom) == {"constant", "phantom"} and set(phantom["phantom"]) == {"kspace", "area"}
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
    # exported as export_deploy.py exports it: ONNX Runtime gives the same enlargement
    import torch

    from checkpoint import build_from_checkpoint
    from onnx_export import export_all
    model, _ = build_from_checkpoint(os.path.join(out, "best_miram_superres.pth"), "superres")
    paths = export_all(out, "", None, None, torch.rand(2, 1, 64, 64), None, upscaler=model.eval())
    assert set(paths["superres"]) == {"ort-fp32"}
    onnx_result = str(tmp_path / "x2_onnx.tif")
    enhance.main(enhance_args(out, "--input", scan, "--output", onnx_result, "--mode", "superres", "--backend", "onnx"))
    assert np.abs(tifffile.imread(onnx_result).astype(int) - big.astype(int)).max() <= 1  # uint8 rounding

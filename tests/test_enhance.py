import io
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

import enhance
import imaging
import restoration
import train
from config import MiramError
from conftest import enhance_args, tiny_args
from records import run_cli


def identity_restorer(size=64, patch=16, seen=None):
    """A 'model' that returns its input: a correct pipeline must then return the scan unchanged (at the
    model's size; resized to it and back otherwise). seen: a list that gets every batch it is given."""
    def predict(imgs, noise, ratio):
        if seen is not None:
            seen.append(imgs.copy())
        t = torch.from_numpy(imgs)
        return imgs, F.avg_pool2d(t, 2).numpy()
    return restoration.Restorer(predict, size, patch, 0.75)


@pytest.mark.parametrize("shape", [(64, 64), (100, 150), (37, 70), (130, 64)])
def test_the_model_sees_a_slice_as_training_does_and_the_result_comes_back_onto_its_pixels(shape):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = 0.5 + 0.3 * np.sin(xx / 9) * np.cos(yy / 11)  # smooth: resizing to 64 and back keeps it
    seen = []
    fine, coarse = identity_restorer(seen=seen).reconstruct(img)
    # the whole slice padded to a centred square and resized to the model's size, as training reads it
    assert np.allclose(seen[0][0, 0], imaging.fit_to_square(img, 64), atol=1e-6)
    assert fine.shape == shape and coarse.shape == ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    # in place (a pixel's shift would be 0.03 off): away from the edges, where resizing mixes in the square's
    # zero padding
    assert np.abs(fine - img).max() < 1e-6 if shape == (64, 64) else np.abs(fine - img)[6:-6, 6:-6].max() < 0.015
    assert np.abs(coarse - img[::2, ::2])[3:-3, 3:-3].max() < 0.05


def test_window_masks_show_every_patch_once():
    noise = restoration.window_noise(14, 49)
    assert noise.shape == (4, 196)
    visible = noise < 49
    assert (visible.sum(1) == 49).all() and (visible.sum(0) == 1).all()  # each patch visible exactly once
    # at 0.75 each pass shows one 2x2 phase of the grid
    phases = {tuple(np.unique((np.arange(196)[v] // 14 % 2) * 2 + np.arange(196)[v] % 14 % 2)) for v in visible}
    assert phases == {(0,), (1,), (2,), (3,)}
    damaged = np.zeros(196, bool)
    damaged[[0, 1, 14, 15, 100]] = True
    noise = restoration.window_noise(14, 49, damaged)
    visible = noise < 49
    assert not visible[:, damaged].any() and (visible[:, ~damaged].sum(0) >= 1).all()


def make_scans(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:80, :96]
    base = 0.5 + 0.3 * np.sin(xx / 7) * np.cos(yy / 5)
    files = {}
    tifffile.imwrite(tmp_path / "u8.tif", (base * 255).astype(np.uint8)); files["u8.tif"] = np.uint8
    u16 = (base * 60000 + rng.normal(0, 100, base.shape)).clip(0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", u16); files["u16.tif"] = np.uint16
    tifffile.imwrite(tmp_path / "f32.tif", (base * 3.7 - 1).astype(np.float32)); files["f32.tif"] = np.float32
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([(base * 200).astype(np.uint8)] * 3), photometric="minisblack")
    files["stack.tif"] = np.uint8
    Image.fromarray((base * 255).astype(np.uint8)).save(tmp_path / "g8.png"); files["g8.png"] = np.uint8
    rgb = np.repeat((base * 255).astype(np.uint8)[..., None], 3, -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png"); files["rgb.png"] = np.uint8
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-40, 30, 12]
    vol = np.stack([(base * 1000).astype(np.int16)] * 4, -1)
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "vol.nii.gz"); files["vol.nii.gz"] = np.int16
    from pydicom.data import get_testdata_file
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm"); files["mr.dcm"] = np.int16
    return files


def test_every_format_round_trips_shape_dtype_and_range(tmp_path):
    files = make_scans(tmp_path)
    for name, dtype in files.items():
        src = str(tmp_path / name)
        out = str(tmp_path / ("out_" + name))
        r = identity_restorer(max(imaging.read_scan(src).slices.shape[1:]))  # the scan's own size: exact
        enhance.process_file(r, src, out, "reconstruct", None, "fine", False)
        a, b = imaging.read_scan(src), imaging.read_scan(out)
        assert b.dtype == dtype and b.shape == a.shape, name
        # identity model: the values come back (integers exactly, floats to rounding)
        assert np.allclose(a.slices, b.slices, atol=1e-5 * max(1, np.abs(a.slices).max())), name
    nin, nout = nib.load(tmp_path / "vol.nii.gz"), nib.load(tmp_path / "out_vol.nii.gz")
    assert np.allclose(nin.affine, nout.affine) and nin.header.get_zooms() == nout.header.get_zooms()
    import pydicom
    din, dout = pydicom.dcmread(tmp_path / "mr.dcm"), pydicom.dcmread(tmp_path / "out_mr.dcm")
    assert din.PatientName == dout.PatientName and din.StudyInstanceUID == dout.StudyInstanceUID
    # a derived image: its own instance UID (archived beside the original it must not collide), marked so
    assert dout.SOPInstanceUID != din.SOPInstanceUID == din.file_meta.MediaStorageSOPInstanceUID
    assert dout.file_meta.MediaStorageSOPInstanceUID == dout.SOPInstanceUID and dout.ImageType[0] == "DERIVED"


def test_coarse_scale_written_at_half_size(tmp_path):
    make_scans(tmp_path)
    out = str(tmp_path / "o.nii.gz")
    written = enhance.process_file(identity_restorer(), str(tmp_path / "vol.nii.gz"), out, "reconstruct", None,
                                   "coarse", False)
    c = nib.load(written[1])
    assert c.shape == (40, 48, 4) and np.allclose(c.header.get_zooms()[:2], (1.8, 1.8))


def test_refuses_to_overwrite(tmp_path):
    make_scans(tmp_path)
    src = str(tmp_path / "u8.tif")
    with pytest.raises(MiramError, match="input itself"):
        enhance.process_file(identity_restorer(), src, src, "reconstruct", None, "fine", False)
    before = open(src, "rb").read()
    (tmp_path / "exists.tif").write_bytes(b"keep me")
    with pytest.raises(MiramError, match="already exists"):
        enhance.process_file(identity_restorer(), src, str(tmp_path / "exists.tif"), "reconstruct", None, "fine", False)
    assert (tmp_path / "exists.tif").read_bytes() == b"keep me" and open(src, "rb").read() == before


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(MiramError, match="bad.tif: cannot read"):
        imaging.read_scan(str(tmp_path / "bad.tif"))
    with pytest.raises(MiramError, match="unsupported format"):
        imaging.read_scan(str(tmp_path / "x.bmp"))


@pytest.fixture
def tiny_ckpt(tiny_data, tmp_path):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    return out


def test_modes_end_to_end_with_a_tiny_checkpoint(tiny_ckpt, tiny_data, tmp_path):
    scan = os.path.join(tiny_data, "HR", "subj1_000.tif")
    img = tifffile.imread(scan)
    out = str(tmp_path / "rec.tif")
    enhance.main(enhance_args(tiny_ckpt, "--input", scan, "--output", out, "--scale", "coarse"))
    rec = tifffile.imread(out)
    assert rec.shape == img.shape and rec.dtype == img.dtype
    assert tifffile.imread(str(tmp_path / "rec_coarse.tif")).shape == (36, 40)
    # deterministic: no random masks
    enhance.main(enhance_args(tiny_ckpt, "--input", scan, "--output", str(tmp_path / "rec2.tif")))
    assert np.array_equal(rec, tifffile.imread(str(tmp_path / "rec2.tif")))
    # inpaint: an irregular region across patch borders; nothing outside it changes
    hole = np.zeros(img.shape, np.uint8)
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]]
    hole[(yy - 30) ** 2 + (xx - 41) ** 2 < 120] = 1
    hole[50:53, 5:70] = 1
    tifffile.imwrite(tmp_path / "hole.tif", hole)
    out = str(tmp_path / "inp.tif")
    enhance.main(enhance_args(tiny_ckpt, "--input", scan, "--output", out, "--mode", "inpaint",
                           "--mask", str(tmp_path / "hole.tif")))
    inp = tifffile.imread(out)
    assert np.array_equal(inp[hole == 0], img[hole == 0])
    assert not np.array_equal(inp[hole == 1], img[hole == 1])


def test_folder_and_interactive(tiny_ckpt, tiny_data, tmp_path, capsys):
    out_dir = str(tmp_path / "restored")
    written = enhance.main(enhance_args(tiny_ckpt, "--input", os.path.join(tiny_data, "HR"),
                                     "--output", out_dir))
    assert len(written) == 12 and len(os.listdir(out_dir)) == 12
    scan = os.path.join(tiny_data, "HR", "subj2_001.tif")
    stdin = io.StringIO(f"{scan}\n/no/such/file.tif\nq\n")
    written = enhance.main(enhance_args(tiny_ckpt), stdin=stdin)
    text = capsys.readouterr().out
    assert len(written) == 1 and os.path.isfile(written[0])
    assert "no such file" in text and "bye" in text


def test_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(enhance.main, ["--output-path", str(tmp_path), "--input", "x.tif"])
    assert "Model not found" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(64, 64), (100, 150)])
def test_corrected_fill_with_a_model_that_adds_nothing_is_the_biharmonic_fill(shape):
    from restoration import biharmonic_fill
    rng = np.random.default_rng(1)
    img = rng.random(shape)
    hole = np.zeros(shape, bool)
    hole[30:50, 40:90] = True  # across tile borders on the larger slice
    calls = []

    def correct(prefilled, weight):
        calls.append(len(prefilled))
        return prefilled
    restorer = restoration.Restorer(None, 64, 16, 0.75, correct=correct)
    out = restorer.inpaint(img, hole)
    assert np.allclose(out, biharmonic_fill(img, hole), atol=1e-6)
    assert np.array_equal(out[~hole], img[~hole])
    assert calls == [1]  # the whole slice, once, at the model's size


def test_inpaint_uses_the_fine_tuned_model_when_it_exists(tiny_ckpt, tiny_data, tmp_path, capsys):
    scan = os.path.join(tiny_data, "HR", "subj1_000.tif")
    img = tifffile.imread(scan)
    hole = np.zeros(img.shape, np.uint8)
    hole[20:44, 25:50] = 1
    tifffile.imwrite(tmp_path / "hole.tif", hole)
    common = ["--input", scan, "--mode", "inpaint", "--mask", str(tmp_path / "hole.tif")]
    enhance.main(enhance_args(tiny_ckpt, *common, "--output", str(tmp_path / "mae.tif")))
    assert "best_miram_inpaint.pth not found" in capsys.readouterr().out
    train.main(tiny_args(tiny_data, tiny_ckpt, "--inpaint"))
    enhance.main(enhance_args(tiny_ckpt, *common, "--output", str(tmp_path / "ft.tif")))
    assert "not found" not in capsys.readouterr().out
    mae, ft = tifffile.imread(tmp_path / "mae.tif"), tifffile.imread(tmp_path / "ft.tif")
    assert np.array_equal(ft[hole == 0], img[hole == 0]) and not np.array_equal(ft, mae)
    # the fine-tuned model carries the MAE's weights and settings: it needs no MAE checkpoint beside it
    alone = tmp_path / "inpaint_only"
    alone.mkdir()
    shutil.copy(os.path.join(tiny_ckpt, "best_miram_inpaint.pth"), alone)
    enhance.main(enhance_args(str(alone), *common, "--output", str(tmp_path / "alone.tif")))
    assert np.array_equal(tifffile.imread(tmp_path / "alone.tif"), ft)
    # --mae-fill asks for the MAE's own prediction back
    enhance.main(enhance_args(tiny_ckpt, *common, "--output", str(tmp_path / "back.tif"), "--mae-fill"))
    assert np.array_equal(tifffile.imread(tmp_path / "back.tif"), mae)
    with pytest.raises(MiramError, match="Model not found"):
        enhance.main(enhance_args(tiny_ckpt, *common, "--output", str(tmp_path / "x.tif"),
                               "--inpaint-checkpoint", str(tmp_path / "none.pth")))

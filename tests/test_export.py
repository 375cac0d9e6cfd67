import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

import classify
import enhance
import export_deploy
import hardware
import imaging
import models
import onnx_export
import runtime
from config import ModelConfig
from conftest import NO_TORCH, enhance_args, tiny_args, write_tiny_dataset
from records import run_cli

pytestmark = pytest.mark.slow


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every phase of the pipeline on tiny data, in this process (the demo's run of them as commands is
    test_demo.py's), then export_deploy.py --short; the export tests read what it wrote."""
    import train
    base = tmp_path_factory.mktemp("export")
    data = write_tiny_dataset(str(base / "data"))
    out = str(base / "o")
    train.main(tiny_args(data, out))
    train.main(tiny_args(data, out, "--inpaint"))
    classify.main(tiny_args(data, out))
    export_deploy.main(tiny_args(data, out, "--iters", "3", "--skip-spec", "--skip-peer", "--short"))
    return data, out, json.load(open(os.path.join(out, "deploy_benchmark.json")))


def test_export_writes_checked_graphs_parity_and_benchmark(exported):
    data, out, report = exported
    for name in ("miram_model_optimized.onnx", "miram_mae.onnx", "miram_inpaint.onnx", "deploy_benchmark.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    saved = json.load(open(os.path.join(out, "deploy_benchmark.json")))
    assert saved["threads"] == 2 and saved["opset"] == onnx_export.OPSET
    got = {(r["model"], r["backend"], r["batch"]) for r in saved["results"]}
    # bf16 autocast is timed only where the CPU computes bf16 natively and faster; elsewhere the report says why
    bf16 = hardware.native_amp(torch.device("cpu")) and hardware.bf16_is_faster(ModelConfig().embed_dim)[0]
    assert ("skipped" in saved) != bf16
    for model in ("classifier", "mae"):
        for backend in ("torch-fp32", "torch-bf16", "ort-fp32"):
            timed = (model, backend, 1) in got and (model, backend, 16) in got
            assert timed == (backend != "torch-bf16" or bf16)
    for r in saved["results"]:  # images/s is the batch over the median latency; the share follows from it
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["p50_ms"] * 1e3)
        assert r["share_of_matmul_peak"] == pytest.approx(r["gflop_per_image"] * r["images_per_s"] / saved["matmul_gflops"])
    assert not [r for r in saved["results"] if r["model"] == "peer"]  # --skip-peer


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_torch(exported, batch):
    data, out, _ = exported
    from checkpoint import build_from_checkpoint
    clf, _ = build_from_checkpoint(os.path.join(out, "best_tumor_classifier.pth"), "classifier")
    mae, _ = build_from_checkpoint(os.path.join(out, "best_miram_mae.pth"), "mae")
    x = torch.rand(batch, 1, 64, 64)
    x[-1, :, :32] = 0  # the last image has half the foreground: the others' batch pads it
    noise = torch.rand(batch, 16)
    ClassifierGraph, MAEGraph = onnx_export.graphs()
    with torch.no_grad():
        ref = onnx_export.classifier_outputs(clf.eval(), x, *clf.foreground(x))
        ref_mae = MAEGraph(mae.eval())(x, noise)
        alone = torch.sigmoid(clf(x[-1:]))  # on its own: no padding
    prob, maps = runtime.OnnxClassifier(os.path.join(out, "miram_model_optimized.onnx"))(x.numpy())
    assert prob.shape == (batch,) and np.abs(prob - ref[0].numpy()).max() < 1e-4
    assert abs(prob[-1] - alone.item()) < 1e-4  # a result does not depend on the rest of the batch
    assert np.abs(maps["evidence"] - ref[1].numpy()).max() < 1e-4  # the default map
    assert np.abs(maps["last_block"] - ref[2].numpy()).max() < 1e-4
    for name in ("evidence", "last_block"):
        assert (maps[name][-1, :2] == 0).all()  # blank patches are not encoded: no weight
    fine, coarse = runtime.OnnxMAE(os.path.join(out, "miram_mae.onnx"))(x.numpy(), noise.numpy())
    assert fine.shape == (batch, 1, 64, 64) and coarse.shape == (batch, 1, 32, 32)
    assert np.abs(fine - ref_mae[0].numpy()).max() < 1e-3


def test_onnx_backends_agree_with_torch(exported, tmp_path):
    data, out, _ = exported
    scan = os.path.join(data, "HR", "subj0_000.tif")
    t = classify.main(tiny_args(data, out, "--predict", scan))
    o = classify.main(tiny_args(data, out, "--predict", scan, "--backend", "onnx"))
    assert abs(t["probability"] - o["probability"]) < 1e-4
    assert np.abs(t["heatmaps"]["last_block"] - o["heatmaps"]["last_block"]).max() < 1e-4
    for name in ("evidence", "last_block"):
        assert np.abs(t["heatmaps"][name] - o["heatmaps"][name]).max() < 1e-4
    for mode in ("reconstruct", "inpaint"):
        extra = []
        if mode == "inpaint":
            hole = np.zeros((72, 80), np.uint8)
            hole[20:40, 30:47] = 1
            tifffile.imwrite(tmp_path / "hole.tif", hole)
            extra = ["--mask", str(tmp_path / "hole.tif")]
        a, b = str(tmp_path / f"t_{mode}.tif"), str(tmp_path / f"o_{mode}.tif")
        enhance.main(enhance_args(out, "--input", scan, "--output", a, "--mode", mode, *extra))
        enhance.main(enhance_args(out, "--input", scan, "--output", b, "--mode", mode, "--backend", "onnx", *extra))
        # uint8 output: equal up to a rounding step where fp32 differences straddle .5
        assert np.abs(tifffile.imread(a).astype(int) - tifffile.imread(b).astype(int)).max() <= 1


def test_slices_outside_the_training_foreground_are_marked_and_do_not_decide(exported, tmp_path):
    import nibabel as nib
    data, out, _ = exported
    low, high = torch.load(os.path.join(out, "best_tumor_classifier.pth"), weights_only=True)["trained_foreground"]
    head = tifffile.imread(os.path.join(data, "HR", "subj0_000.tif"))
    speck = np.zeros_like(head)
    speck[30:34, 30:34] = 200  # one patch of the slice: far less head than any slice trained on
    vol = str(tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(imaging.VolumeView(np.eye(4)).stored(np.stack([head, speck])), np.eye(4)), vol)
    for backend in ([], ["--backend", "onnx"]):
        r = classify.main(tiny_args(data, out, "--predict", vol, *backend))
        assert r["rows"][1]["foreground"] < low <= r["rows"][0]["foreground"] <= high
        assert [row["decides"] for row in r["rows"]] == [True, False] and r["slice"] == 0


def test_a_volume_or_folder_is_classified_slice_by_slice_as_each_slice_alone(exported, tmp_path, capsys):
    import nibabel as nib
    data, out, _ = exported
    names = ["subj0_000.tif", "subj1_001.tif", "subj2_002.tif"]
    slices = [tifffile.imread(os.path.join(data, "HR", n)) for n in names]
    # stored so that its axial slices (SLICE_AXIS 2, as training cuts a volume) are the files'; an empty one
    stack = imaging.VolumeView(np.eye(4)).stored(np.stack(slices[:2] + [np.zeros_like(slices[0])] + slices[2:]))
    vol = str(tmp_path / "head.nii.gz")
    nib.save(nib.Nifti1Image(stack, np.eye(4)), vol)
    alone = [classify.main(tiny_args(data, out, "--predict", os.path.join(data, "HR", n)))["probability"]
             for n in names]
    for backend in ([], ["--backend", "onnx"]):
        r = classify.main(tiny_args(data, out, "--predict", vol, *backend))
        assert r["slices"] == [0, 1, 3]  # the constant slice is skipped
        assert np.abs(np.array(r["probabilities"]) - alone).max() < 1e-4
        assert r["probability"] == max(r["probabilities"]) and r["slice"] == r["slices"][int(np.argmax(alone))]
        rows = [row.split(",") for row in open(r["table"]).read().splitlines()]
        assert rows[0] == ["file", "slice", "p_tumor", "class", "p_class", "foreground", "decides", "peak_row",
                           "peak_col", "peak_i", "peak_j", "peak_k"] and [int(row[1]) for row in rows[1:]] == [0, 1, 3]
        # the mask layout's two classes: each slice's is the one its p(tumor) calls, with that class's probability
        assert all(row[3] == ("tumor" if float(row[2]) >= 0.5 else "no tumor") for row in rows[1:])
        assert all(abs(float(row[4]) - max(float(row[2]), 1 - float(row[2]))) < 1e-5 for row in rows[1:])
        rows = [row[:3] + row[5:] for row in rows]  # the columns below as they were numbered
        # where each slice's evidence peaks, in the volume's own voxels (stored axial: k is the slice)
        assert all(row[5] == row[6] == "" and int(row[9]) == int(row[1]) and 0 <= int(row[7]) < stack.shape[0]
                   for row in rows[1:])
        # the share of each slice's patches the classifier read: the head's part of the 64 x 64 slice
        shares = [float(row[3]) for row in rows[1:]]
        assert all(0.2 < f < 0.9 for f in shares) and np.allclose(r["foreground"], shares, atol=1e-3)
        assert {row[0] for row in rows[1:]} == {"head.nii.gz"}
        assert os.path.isfile(r["heatmap"]) and f"_slice{r['slice']:03d}" in r["heatmap"]
        assert r["heatmaps"]["evidence"].shape == (1, 64, 64)
    assert "3 slices of 1 file classified (volumes cut along axis 2; 1 constant slices skipped)" in capsys.readouterr().out
    # cut along another axis, as SLICE_AXIS says: 80 slices of 72 x 10
    thick = str(tmp_path / "thick.nii.gz")
    nib.save(nib.Nifti1Image(np.repeat(slices[0][..., None], 10, axis=-1), np.eye(4)), thick)
    assert len(classify.main(tiny_args(data, out, "--predict", thick, "--slice-axis", "1"))["probabilities"]) == 80
    # a TIFF stack: its pages
    stack_tif = str(tmp_path / "stack.tif")
    tifffile.imwrite(stack_tif, np.stack(slices), photometric="minisblack")  # not planar RGB
    got = classify.main(tiny_args(data, out, "--predict", stack_tif))["probabilities"]
    assert np.abs(np.array(got) - alone).max() < 1e-4
    # a folder: every file's slices, an unreadable file skipped with one warning
    folder = tmp_path / "scans"
    folder.mkdir()
    for n in names[:2]:
        tifffile.imwrite(folder / n, tifffile.imread(os.path.join(data, "HR", n)))
    os.replace(vol, folder / "head.nii.gz")
    (folder / "broken.tif").write_bytes(b"not a tiff")
    with pytest.warns(UserWarning, match="skipping .*broken.tif"):
        r = classify.main(tiny_args(data, out, "--predict", str(folder)))
    assert [(os.path.basename(f), i) for f, i in zip(r["files"], r["slices"])] == [
        ("head.nii.gz", 0), ("head.nii.gz", 1), ("head.nii.gz", 3), ("subj0_000.tif", 0), ("subj1_001.tif", 0)]
    assert np.abs(np.array(r["probabilities"]) - (alone + alone[:2])).max() < 1e-4
    assert os.path.basename(r["table"]).startswith("tumor_predict_scans")
    assert "5 slices of 3 files classified (volumes cut along axis 2; 1 unreadable files skipped; 1 constant " \
           "slices skipped)" in capsys.readouterr().out
    blank = str(tmp_path / "blank.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.uint8), np.eye(4)), blank)
    with pytest.raises(SystemExit) as e:
        run_cli(classify.main, tiny_args(data, out, "--predict", blank))
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {blank}: every one of its 3 slices is constant: nothing to classify"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        run_cli(classify.main, tiny_args(data, out, "--predict", str(tmp_path / "empty")))
    assert "empty: no .tif, .tiff, .png, .jpg, .jpeg, .nii, .nii.gz, .nrrd, .dcm files in this folder" in capsys.readouterr().err


def test_onnx_path_runs_without_torch(exported, tmp_path):
    data, out, _ = exported
    scan = os.path.join(data, "HR", "subj1_001.tif")
    hole = np.zeros((72, 80), np.uint8)
    hole[10:30, 12:40] = 1
    tifffile.imwrite(tmp_path / "hole.tif", hole)
    code = (
        NO_TORCH +
        "import classify, enhance\n"
        f"classify.main(['--output-path', {out!r}, '--predict', {scan!r}, '--backend', 'onnx'])\n"
        f"enhance.main(['--output-path', {out!r}, '--input', {scan!r}, '--output', {str(tmp_path / 'r.tif')!r},"
        " '--backend', 'onnx'])\n"
        f"enhance.main(['--output-path', {out!r}, '--input', {scan!r}, '--output', {str(tmp_path / 'i.tif')!r},"
        f" '--mode', 'inpaint', '--mask', {str(tmp_path / 'hole.tif')!r}, '--backend', 'onnx'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "p(tumor)" in r.stdout and os.path.isfile(tmp_path / "r.tif") and os.path.isfile(tmp_path / "i.tif")
    assert "not found" not in r.stdout  # the exported inpainting model was used


def test_int8_weights_fit_seven_bits(tmp_path):
    """Full-range s8 weights saturate VPMADDUBSW's int16 pair sums on CPUs without VNNI: 7-bit ones never do."""
    import onnx
    from onnx import numpy_helper
    from config import ModelConfig
    torch.manual_seed(0)
    clf = models.TumorClassifier(ModelConfig(img_size=64, embed_dim=32, depth=2, num_heads=2)).eval()
    path = onnx_export.export_all(str(tmp_path), "", clf, None, torch.rand(2, 1, 64, 64), None)["classifier"]["ort-int8"]
    weights = [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    # |w| <= 64: a pair of u8 x s8 products sums to at most 2 * 255 * 64 = 32640, inside int16
    assert len(weights) >= 8 and all(abs(w.astype(int)).max() <= 64 for w in weights)
    assert any(abs(w.astype(int)).max() == 64 for w in weights)  # and the range is used


def test_results_page_is_written_from_the_run_artifacts(exported, tmp_path):
    import evaluate
    from records import cpu_name
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import report
    data, out, _ = exported
    evaluate.main(tiny_args(data, out, "--n-samples", "1"))
    page = str(tmp_path / "docs" / "RESULTS.md")
    report.main(["--outputs", out, "--to", page])
    text = open(page).read()
    clf = json.load(open(os.path.join(out, "classification_metrics.json")))
    ev = json.load(open(os.path.join(out, "eval_metrics.json")))
    assert f"| finetune | {clf['auroc']:.3f} |" in text
    assert f"**{ev['margin_db']['masked_psnr']:+.2f} dB**" in text
    assert text.count(cpu_name()) >= 4  # pre-training, inpainting, evaluation, classification, deployment name it
    assert "Not measured yet" in text  # no GPU check ran here
    assert os.path.isfile(tmp_path / "docs" / "loss_curve.png") and "![Pre-training loss](loss_curve.png)" in text


def test_a_classifier_at_another_size_with_the_convolutional_branch_exports_one_map(exported, tmp_path):
    from checkpoint import build_from_checkpoint
    data, pretrained, _ = exported
    out = str(tmp_path / "o")
    classify.main(tiny_args(data, out, "--n-viz", "0", "--cls-img-size", "96", "--cls-conv-evidence", "true",
                            "--checkpoint", os.path.join(pretrained, "best_miram_mae.pth")))
    clf, _ = build_from_checkpoint(os.path.join(out, "best_tumor_classifier.pth"), "classifier")
    # the 64-pixel encoder (4x4 patches) reads 96 pixels (6x6) with its positions in the range it learned
    assert clf.cfg.img_size == 96 and clf.cfg.pos_grid == 4 and clf.conv_evidence is not None
    scan = os.path.join(data, "HR", "subj0_000.tif")
    assert classify.main(tiny_args(data, out, "--predict", scan))["heatmaps"]["evidence"].shape == (1, 96, 96)
    x = torch.rand(3, 1, 96, 96)
    x[-1, :, :48] = 0  # padded by the others in a batch
    paths = onnx_export.export_all(str(tmp_path), "", clf.eval(), None, x[:2], None)
    with torch.no_grad():
        ref = onnx_export.classifier_outputs(clf, x, *clf.foreground(x))
    prob, maps = runtime.OnnxClassifier(paths["classifier"]["ort-fp32"])(x.numpy())
    assert np.abs(prob - ref[0].numpy()).max() < 1e-4
    assert np.abs(maps["evidence"] - ref[1].numpy()).max() < 1e-4  # the default map, conv branch included

"""Hostile and unusual input: each ends in one line naming the file or setting, a non-zero exit where the
work was not done, and nothing lost or half-written."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpoint
import records
import classify
import enhance
import export_deploy
import imaging
import train
from config import ConfigError, ModelConfig, load_config
from conftest import enhance_args, tiny_args, tiny_mae, train_tiny_pipeline, write_tiny_dataset
from records import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(capsys, main, argv):
    """Runs main as its script would; -> the single stderr line (exit status 1 asserted)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def compressed_bomb(path, side=20480, tile=2048):
    """A zlib-compressed tiled TIFF of side x side zeros: ~400 KB on disk at the default side."""
    block = np.zeros((tile, tile), np.uint8)
    tifffile.imwrite(path, data=(block for _ in range((side // tile) ** 2)), shape=(side, side), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib")
    return str(path)


def png_header_only(path, width, height):
    """A PNG whose header claims width x height (its pixel data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_pipeline(str(tmp_path_factory.mktemp("hostile")))


# ---- size: a pixel budget checked from the header ----------------------------------------------------

def test_a_compressed_bomb_is_refused_from_its_header_by_every_reader(trained, tmp_path, capsys):
    data, out = trained
    bomb = compressed_bomb(tmp_path / "bomb.tif")
    assert os.path.getsize(bomb) < 2_000_000
    with pytest.raises(imaging.DataError, match="20480 x 20480 = 419 million values, over the MAX_PIXELS budget"):
        imaging.read_scan(bomb)
    for main, argv in ((enhance.main, enhance_args(out, "--input", bomb, "--output", str(tmp_path / "r.tif"))),
                       (classify.main, tiny_args(data, out, "--predict", bomb))):
        assert "bomb.tif" in one_line_error(capsys, main, argv)
    assert not os.path.exists(tmp_path / "r.tif")


def test_the_budget_is_a_setting_and_applies_to_training_folders(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=2, per_subject=2)  # 72 x 80 slices
    png_header_only(os.path.join(data, "HR", "huge_001.png"), 30000, 30000)
    with pytest.warns(UserWarning, match="huge_001.png: 30000 x 30000 x 1 = 900 million values"):
        got = load_config(environ={"MIRAM_DATA_PATH": data, "MIRAM_PRESET": "tiny"})
        from dataset import load_split
        train_set, val_set = load_split(got, quiet=True)
    assert len(train_set) + len(val_set) == 4  # the bomb skipped, the rest read
    with pytest.raises(imaging.DataError, match="over the MAX_PIXELS budget of 0 million"):
        imaging.read_scan(os.path.join(data, "HR", "subj0_000.tif"), max_pixels=72 * 80 - 1)
    with pytest.raises(ConfigError, match="MAX_PIXELS"):
        load_config(environ={"MIRAM_MAX_PIXELS": "0"})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 24), min_size=2, max_size=4), channels=st.sampled_from([0, 1, 2, 3, 4]),
       dtype=st.sampled_from(["uint8", "uint16", "int16", "float32", "float64", "bool"]),
       budget=st.integers(1, 4000))
def test_the_io_table_reads_or_refuses_any_header(tmp_path_factory, shape, channels, dtype, budget):
    shape = tuple(shape) + ((channels,) if channels else ())
    path = str(tmp_path_factory.mktemp("h") / "x.tif")
    tifffile.imwrite(path, np.ones(shape, dtype), photometric="rgb" if channels in (3, 4) else "minisblack")
    values = int(np.prod(shape))
    try:
        scan = imaging.read_scan(path, max_pixels=budget)
    except imaging.DataError as e:  # refused: one line naming the file, for a reason that holds
        assert "x.tif" in str(e) and "\n" not in str(e)
        assert values > budget or min(shape[-2:]) < 8 or any(
            reason in str(e) for reason in ("expected", "too small", "cannot read", "square", "too long and thin"))
        return
    assert values <= budget and scan.slices.ndim == 3 and min(scan.slices.shape[1:]) >= 8


# ---- checkpoints: stored settings bounded and checked before anything is allocated --------------------

def test_a_checkpoint_asking_for_a_huge_model_is_refused(tmp_path):
    path = str(tmp_path / "crafted.pth")
    checkpoint.save_checkpoint(path, tiny_mae(), "mae")
    state = torch.load(path, weights_only=True)
    state["model_config"]["embed_dim"] = 65536  # 16 GB of position embeddings and weights
    torch.save(state, path)
    with pytest.raises(checkpoint.MiramError, match="crafted.pth: its stored model settings are refused.*EMBED_DIM"):
        checkpoint.build_from_checkpoint(path, "mae")


def test_weights_that_do_not_fit_their_settings_are_named(tmp_path):
    path = str(tmp_path / "mixed.pth")
    checkpoint.save_checkpoint(path, tiny_mae(), "mae")
    state = torch.load(path, weights_only=True)
    state["model_config"]["embed_dim"] = 32  # within bounds, but not what the tensors are
    torch.save(state, path)
    with pytest.raises(checkpoint.MiramError, match=r"do not match its stored model settings \(encoder\.cls_token: "
                                                    r"\(1, 1, 16\) stored, \(1, 1, 32\) expected\)"):
        checkpoint.build_from_checkpoint(path, "mae")


def test_an_onnx_file_given_as_a_checkpoint_is_called_what_it_is(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch")  # a protobuf's first bytes
    with pytest.raises(checkpoint.MiramError, match="not a PyTorch checkpoint.*--backend onnx"):
        checkpoint.load_checkpoint(str(path))


def test_an_onnx_export_of_another_kind_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    import runtime
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["fine"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("fine", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in ((runtime.META_KEY, json.dumps(ModelConfig(img_size=32).to_dict())), (runtime.KIND_KEY, "mae")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp_path / "mae.onnx"))
    with pytest.raises(runtime.MiramError, match="mae.onnx: is the exported mae model, not the classifier model"):
        runtime.OnnxClassifier(str(tmp_path / "mae.onnx"))


# ---- settings and flags -------------------------------------------------------------------------------

@pytest.mark.parametrize("env, name", [({"MIRAM_MASK_RATIO": "0"}, "MASK_RATIO"), ({"MIRAM_LEARNING_RATE": "nan"}, "LEARNING_RATE"),
                                       ({"MIRAM_WEIGHT_DECAY": "nan"}, "WEIGHT_DECAY"), ({"MIRAM_CLS_LR": "inf"}, "CLS_LR")])
def test_settings_that_would_crash_later_are_refused_now(env, name):
    with pytest.raises(ConfigError, match=f"bad setting {name}"):
        load_config(environ=env)


@pytest.mark.parametrize("flag", ["--max-images", "--iters", "--threads"])
def test_export_flags_are_checked_before_work(trained, capsys, flag):
    data, out = trained
    assert flag in one_line_error(capsys, export_deploy.main, tiny_args(data, out, flag, "0"))


def test_enhance_batch_zero(trained, capsys):
    data, out = trained
    assert "--batch" in one_line_error(capsys, enhance.main, enhance_args(out, "--input", "x.tif", "--batch", "0"))


# ---- outputs: where they can go, their mode, nothing replaced -----------------------------------------

def test_unwritable_places_are_refused_before_any_compute(trained, tmp_path, capsys):
    data, out = trained
    scan = os.path.join(data, "HR", "subj0_000.tif")
    (tmp_path / "afile").write_text("x")
    line = one_line_error(capsys, enhance.main, enhance_args(out, "--input", scan, "--output",
                                                          str(tmp_path / "afile" / "sub" / "r.tif")))
    assert "afile is a file" in line
    line = one_line_error(capsys, enhance.main, enhance_args(out, "--input", os.path.join(data, "HR"), "--output",
                                                          str(tmp_path / "afile")))
    assert "is a file; a folder --input needs a folder --output" in line
    line = one_line_error(capsys, classify.main, tiny_args(data, str(tmp_path / "afile" / "o"), "--predict", scan,
                                                           "--checkpoint", os.path.join(out, "best_tumor_classifier.pth")))
    assert "cannot write the heatmap" in line


def test_whole_image_damage_mask_is_one_line(trained, tmp_path, capsys):
    data, out = trained
    scan = os.path.join(data, "HR", "subj0_000.tif")
    tifffile.imwrite(tmp_path / "all.tif", np.ones((72, 80), np.uint8))
    line = one_line_error(capsys, enhance.main, enhance_args(out, "--input", scan, "--mode", "inpaint", "--mask",
                                                          str(tmp_path / "all.tif"), "--output", str(tmp_path / "r.tif")))
    assert "whole" in line and not os.path.exists(tmp_path / "r.tif")


def test_overwrite_keeps_the_umask_mode_and_predict_keeps_earlier_heatmaps(trained, tmp_path):
    data, out = trained
    scan = os.path.join(data, "HR", "subj0_000.tif")
    target = str(tmp_path / "r.tif")
    old = os.umask(0o002)
    try:
        enhance.main(enhance_args(out, "--input", scan, "--output", target))
        assert os.stat(target).st_mode & 0o777 == 0o664
        enhance.main(enhance_args(out, "--input", scan, "--output", target, "--overwrite"))
        assert os.stat(target).st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    first = classify.main(tiny_args(data, out, "--predict", scan))["heatmap"]
    second = classify.main(tiny_args(data, out, "--predict", scan))["heatmap"]
    assert first != second and os.path.isfile(first) and second.endswith("_2.png")


def test_a_blank_image_is_not_classified(trained, tmp_path, capsys):
    data, out = trained
    tifffile.imwrite(tmp_path / "blank.tif", np.zeros((64, 64), np.uint8))
    assert "constant image" in one_line_error(capsys, classify.main, tiny_args(data, out, "--predict", str(tmp_path / "blank.tif")))


def test_folder_rerun_skips_what_is_done_and_interactive_failure_exits_1(trained, tmp_path, capsys):
    data, out = trained
    dest = str(tmp_path / "restored")
    enhance.main(enhance_args(out, "--input", os.path.join(data, "HR"), "--output", dest))
    first = sorted(os.listdir(dest))
    os.remove(os.path.join(dest, first[0]))  # as if interrupted before the last scan
    capsys.readouterr()
    written = enhance.main(enhance_args(out, "--input", os.path.join(data, "HR"), "--output", dest))
    assert written == [os.path.join(dest, first[0])] and sorted(os.listdir(dest)) == first
    assert f"{len(first) - 1} of {len(first)} scans already restored" in capsys.readouterr().out
    import io
    with pytest.raises(SystemExit) as e:
        run_cli(lambda argv: enhance.main(enhance_args(out), stdin=io.StringIO("nope.tif\nmissing.tif\n\n")))
    assert e.value.code == 1


def test_ctrl_c_in_a_folder_run_keeps_every_finished_scan(trained, tmp_path):
    data, out = trained
    files = sorted(os.listdir(os.path.join(data, "HR")))
    calls = []

    def interrupt_on_third(restorer, slices, mode, holes):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return slices, None
    real = enhance.enhance_slices
    enhance.enhance_slices = interrupt_on_third
    try:
        with pytest.raises(KeyboardInterrupt):
            enhance.main(enhance_args(out, "--input", os.path.join(data, "HR"), "--output", str(tmp_path / "r")))
    finally:
        enhance.enhance_slices = real
    assert sorted(os.listdir(tmp_path / "r")) == files[:2]  # the two finished, whole; no temporary left


def test_interrupt_messages_fit_what_was_running(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        run_cli(interrupted, interrupted="interrupted: nothing was written")
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted: nothing was written"


def test_a_one_pixel_image_is_called_too_small(tmp_path):
    tifffile.imwrite(tmp_path / "dot.tif", np.ones((1, 1), np.uint8))
    with pytest.raises(imaging.DataError, match="too small"):
        imaging.read_slice(str(tmp_path / "dot.tif"))


# ---- one writer per output folder ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "o")
    cmd = [sys.executable, "train.py", *tiny_args(data, out, "--n-epochs", "500")]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = os.path.join(out, records.LOCK_NAME)
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(out, "checkpoint.pth")) and time.time() < deadline:
            time.sleep(0.2)
        holder = json.load(open(lock))
        assert holder["pid"] == first.pid
        # the second run in this process (a second process would only add its start-up time)
        line = one_line_error(capsys, train.main, cmd[2:])
        assert f"in use by another run (pid {first.pid}" in line
        assert first.poll() is None  # the first run goes on, its files untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert json.load(open(lock))["pid"] == first.pid  # killed: its lock is left behind
    train.main(cmd[2:] + ["--stop-after", "1"])
    said = capsys.readouterr().out
    assert f"taking over the lock of pid {first.pid}" in said and "resuming pretrain" in said
    assert not os.path.exists(lock)  # released at the end

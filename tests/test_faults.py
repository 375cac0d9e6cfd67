"""Nothing lost, nothing let in: kills, full disks, corrupted and hostile files."""
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpoint
import records
import classify
import dataset
import imaging
import models
import train
from conftest import enhance_args, tiny_args, train_tiny_pipeline
from records import run_cli


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(tiny_data, tmp_path, capsys):
    cmd = [sys.executable, "train.py", *tiny_args(tiny_data, "OUT", "--n-epochs", "25")]
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    # the uninterrupted run and the resume in this process (a process start less each), on the killed
    # process's one thread: bitwise equality needs the same thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main([c.replace("OUT", ref) for c in cmd[2:]])
        proc = subprocess.Popen([c.replace("OUT", killed) for c in cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        killed_run(proc, killed, cmd, capsys)
    finally:
        torch.set_num_threads(threads)
    assert_same_weights(weights(os.path.join(ref, "checkpoint.pth")), weights(os.path.join(killed, "checkpoint.pth")))
    assert not [f for f in os.listdir(killed) if f.startswith(records.TMP_PREFIX)]


def killed_run(proc, killed, cmd, capsys):
    """Kills the run proc is once it has logged 3 epochs, then resumes it with the same command."""
    log = os.path.join(killed, "train_log.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(log) and sum(1 for _ in open(log)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no cleanup, no handler: as a crash or an OOM kill
    proc.wait()
    done = torch.load(os.path.join(killed, "checkpoint.pth"), weights_only=True)["epoch"]
    assert 1 <= done < 25  # the log may be one epoch ahead of the checkpoint
    train.main([c.replace("OUT", killed) for c in cmd[2:]])  # the same command again
    assert "resuming pretrain from" in capsys.readouterr().out


def test_kill_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pth")
    m = models.MIRAM(models.ModelConfig(img_size=32, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                                        decoder_depth=1, decoder_num_heads=2))
    checkpoint.save_checkpoint(path, m, "mae", epoch=1)
    good = open(path, "rb").read()

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(checkpoint.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, m, "mae", epoch=2)
    assert open(path, "rb").read() == good
    assert checkpoint.load_checkpoint(path, "mae")["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
    # a temporary file from a process killed harder (SIGKILL: no cleanup) is removed on the next start
    (tmp_path / ".tmp-abc.pth").write_bytes(b"partial")
    assert records.remove_stale_temporaries(str(tmp_path)) == 1


def test_only_the_temporaries_of_writers_no_longer_running_are_removed(tmp_path):
    """demo.py runs phases side by side in one folder: one's start must not delete the file another is writing."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live, dead = f"{records.TMP_PREFIX}{os.getpid()}-a.pth", f"{records.TMP_PREFIX}{gone.pid}-b.pth"
    for name in (live, dead):
        (tmp_path / name).write_bytes(b"partial")
    assert records.remove_stale_temporaries(str(tmp_path)) == 1
    assert os.listdir(tmp_path) == [live]


def test_full_disk_is_one_clear_error_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out, "--n-epochs", "2", "--stop-after", "1"))
    before = open(os.path.join(out, "checkpoint.pth"), "rb").read()

    def no_space(obj, f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, tiny_args(tiny_data, out, "--n-epochs", "2"))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "previous one is kept" in err and "Traceback" not in err
    assert open(os.path.join(out, "checkpoint.pth"), "rb").read() == before


def test_classifier_resume_matches_uninterrupted(tiny_data, tmp_path):
    out = str(tmp_path / "o")
    train.main(tiny_args(tiny_data, out))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for d in (a, b):
        os.makedirs(d)
        os.link(os.path.join(out, "best_miram_mae.pth"), os.path.join(d, "best_miram_mae.pth"))
    classify.main(tiny_args(tiny_data, a, "--cls-epochs", "3", "--n-viz", "0"))
    classify.main(tiny_args(tiny_data, b, "--cls-epochs", "3", "--n-viz", "0", "--stop-after", "2"))
    classify.main(tiny_args(tiny_data, b, "--cls-epochs", "3", "--n-viz", "0"))
    assert_same_weights(weights(os.path.join(a, "classifier_checkpoint.pth")),
                        weights(os.path.join(b, "classifier_checkpoint.pth")))


def test_unwritable_output_directory(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit):
        run_cli(train.main, tiny_args(tiny_data, str(blocker / "out")))
    assert "cannot create the output directory" in capsys.readouterr().err


def test_constant_and_orphan_files_are_warned_and_counted(tiny_data):
    tifffile.imwrite(os.path.join(tiny_data, "HR", "subj9_000.tif"), np.zeros((40, 40), np.uint8))
    tifffile.imwrite(os.path.join(tiny_data, "HR", "subj9_001.tif"), np.full((40, 40), 7, np.uint8))
    tifffile.imwrite(os.path.join(tiny_data, "MASK", "ghost_000.tif"), np.zeros((40, 40), np.uint8))
    with pytest.warns(UserWarning) as record:
        data = dataset.load_slices(tiny_data, 64, r"^(.+?)(?:_\d+)?$", quiet=True)
    text = " ".join(str(w.message) for w in record)
    assert "constant image" in text and "ghost_000" in text and "have no mask" in text
    assert len(data) == 12  # the two constant images are skipped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_tiff_bytes_read_or_raise_our_error(tmp_path_factory, data):
    base = tmp_path_factory.mktemp("fuzz")
    path = base / "seed.tif"
    if not hasattr(test_fuzzed_tiff_bytes_read_or_raise_our_error, "seed"):
        tifffile.imwrite(path, (np.arange(24 * 20) % 251).reshape(24, 20).astype(np.uint8))
        test_fuzzed_tiff_bytes_read_or_raise_our_error.seed = path.read_bytes()
    blob = bytearray(test_fuzzed_tiff_bytes_read_or_raise_our_error.seed)
    for _ in range(data.draw(st.integers(1, 12))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    path = base / "fuzzed.tif"
    path.write_bytes(bytes(blob))
    try:
        img = imaging.read_slice(str(path))
    except imaging.DataError as e:
        assert "fuzzed.tif" in str(e)
    else:
        assert img.ndim == 2 and img.dtype == np.float32 and np.isfinite(img).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_pipeline(str(tmp_path_factory.mktemp("trained")))


def bad_files(folder):
    """One file per kind of bad input, each with a path that has a space and a non-ASCII letter."""
    folder.mkdir(exist_ok=True)
    files = {"truncated": folder / "trunc ü.tif", "zero-byte": folder / "empty ü.tif",
             "not an image": folder / "text ü.tif", "NaN": folder / "nan ü.tif", "stack": folder / "stack ü.tif"}
    tifffile.imwrite(files["truncated"], np.ones((64, 64), np.uint16))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:100])
    files["zero-byte"].write_bytes(b"")
    files["not an image"].write_text("patient notes, not pixels")
    a = np.ones((64, 64), np.float32)
    a[1, 1] = np.inf
    tifffile.imwrite(files["NaN"], a)
    tifffile.imwrite(files["stack"], np.ones((4, 64, 64), np.uint8), photometric="minisblack")
    return files


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "not an image", "NaN", "stack"])
@pytest.mark.slow
def test_every_script_gives_one_line_for_a_bad_file(trained, tmp_path, kind, capsys):
    import evaluate
    data, out = trained
    bad = str(bad_files(tmp_path / "in")[kind])
    calls = {
        "classify --predict": (classify.main, tiny_args(data, out, "--predict", bad)),
        "enhance": (__import__("enhance").main, enhance_args(out, "--input", bad, "--output", str(tmp_path / "r.tif"))),
    }
    if kind != "stack":  # enhance restores stacks slice by slice: a stack is valid input there
        calls["evaluate --data (only bad files)"] = (evaluate.main, tiny_args(data, out, "--data", str(tmp_path / "in")))
    for name, (fn, argv) in calls.items():
        if kind == "stack" and name == "enhance":
            continue
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli(fn, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 1, name
        errors = [line for line in err if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in "\n".join(err), (name, err)
        assert all(line.startswith(("error: ", "warning: ")) for line in err), (name, err)
        assert "ü" in errors[0] or "Dataset empty" in errors[0], (name, errors)  # names the file or folder
    assert not os.path.exists(tmp_path / "r.tif")  # nothing half-written


@pytest.mark.slow
def test_scripts_refuse_to_validate_on_subjects_the_checkpoint_trained_on(trained, capsys):
    import evaluate
    import export_deploy
    data, out = trained
    leaky = ["--split-seed", "1"]  # holds out a subject pre-training (SPLIT_SEED 0) trained on
    calls = {"evaluate": evaluate.main, "train --inpaint": lambda a: train.main([*a, "--inpaint"]),
             "classify": classify.main, "export_deploy": export_deploy.main}
    before = sorted(os.listdir(out))
    for name, fn in calls.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli(fn, tiny_args(data, out, *leaky))
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
        assert e.value.code == 1 and len(err) == 1, (name, err)
        assert "best_miram_mae.pth was trained on" in err[0] and "SPLIT_SEED=0" in err[0], (name, err)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # resuming pre-training would now train on validation subjects
        run_cli(train.main, tiny_args(data, out, *leaky))
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert e.value.code == 1 and len(err) == 1 and "checkpoint.pth: cannot resume under this split" in err[0], err
    assert sorted(os.listdir(out)) == before  # refused before writing anything


def test_a_phase_shares_the_folder_its_pipeline_holds_and_no_one_else_does(tmp_path):
    """demo.py holds the output folder's lock for its whole run; the phases it starts write there beside each
    other, and leave its lock in place; a run that demo.py did not start is still refused."""
    import json
    import socket
    lock = tmp_path / records.LOCK_NAME
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for holder, shared in ((os.getppid(), True), (keeper.pid, False)):
            lock.write_text(json.dumps({"pid": holder, "host": socket.gethostname(), "command": "python demo.py"}))
            if shared:
                with records.output_lock(str(tmp_path), say=lambda *a: None):
                    pass
            else:
                with pytest.raises(records.MiramError, match=f"in use by another run \\(pid {keeper.pid}"):
                    with records.output_lock(str(tmp_path), say=lambda *a: None):
                        pass
            assert json.loads(lock.read_text())["pid"] == holder
    finally:
        keeper.kill()
        keeper.wait()

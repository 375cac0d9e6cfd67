"""What every script shares around its work: results written atomically, one writer per output folder (a lock the
phases of one demo run share), where a figure came from (the command, the CPU, the date), where a phase's time
went (its named stages), and one clear line instead of a traceback when the user can fix the cause."""
import contextlib
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
import warnings

from config import MiramError

TMP_PREFIX = ".tmp-"  # temporary files written beside their target; a killed run's are removed at the next start
LOCK_NAME = ".miram.lock"  # names the one run writing an output folder (output_lock)


def temp_beside(path, suffix=""):
    """(fd, name) of a new temporary file in path's folder (created if needed), with the mode open() would
    give it under the umask (mkstemp makes 0600): write it, then os.replace it onto path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the writer's pid in the name: a later run removes only the files of writers no longer running
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def output_lock(folder, enabled=True, say=print):
    """One writer per output folder: a lock file naming the holder (pid, host, command, start), created
    atomically (written aside, then hard-linked into place). A second run is refused in one line; the lock
    of a process that is no longer running (same host) is taken over, and that is said."""
    if not enabled:
        yield
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise MiramError(f"{folder}: cannot create the output directory ({e.strerror})") from None
    path = os.path.join(folder, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
          "since": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        fd, tmp = temp_beside(path, ".lock")
    except OSError as e:
        raise MiramError(f"{folder}: output directory is not writable ({e.strerror})") from None
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        while True:
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                holder = _lock_holder(path)
                if holder is None and not os.path.exists(path):  # released meanwhile: try again
                    continue
                if holder is None:  # locks are written whole: this one was damaged or written by something else
                    raise MiramError(f"{folder}: its lock file {path} is not one a run wrote; if no run is using "
                                     "this folder, delete it") from None
                if holder.get("host") == me["host"] and holder.get("pid") == os.getppid():
                    break  # held by the pipeline that started this phase (demo.py): its phases share the folder
                if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                    say(f"note: {folder}: taking over the lock of pid {holder['pid']} ({holder.get('command', '?')}), "
                        "which is no longer running")
                    os.remove(path)
                    continue
                raise MiramError(
                    f"{folder}: in use by another run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                    f"since {holder.get('since', '?')}: {holder.get('command', '?')}); wait for it to finish or use "
                    f"another OUTPUT_PATH (if that run is gone, delete {path})") from None
    finally:
        os.remove(tmp)
    try:
        yield
    finally:
        if (_lock_holder(path) or {}).get("pid") == me["pid"]:
            try:
                os.remove(path)
            except OSError:
                pass


def _lock_holder(path):
    """The run a lock file names ({"pid", "host", "command", "since"}), or None where it names none."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def temporary_writer(name):
    """The pid in a temporary file's name (records.temp_beside), or None where it names none."""
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_stale_temporaries(folder):
    """Deletes temporary files a killed process left behind (they are never read as checkpoints); those of a
    writer still running (a phase beside this one, as demo.py runs them) stay."""
    if not os.path.isdir(folder):
        return 0
    stale = [f for f in os.listdir(folder) if f.startswith(TMP_PREFIX) and not f.endswith(".lock")
             and (temporary_writer(f) is None or not _alive(temporary_writer(f)))]
    for f in stale:
        os.remove(os.path.join(folder, f))
    return len(stale)


def save_json(path, obj, **dump_args):
    """Writes obj as JSON atomically: a failure leaves the previous file, never a half-written one."""
    fd, tmp = temp_beside(path, ".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, **dump_args)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def cpu_name(cpuinfo: str = None) -> str:
    """The CPU for every figure a run reports: its model name, family and model, and the widest vector unit
    the kernels can use. A model name alone says "AMD EPYC" for both a Zen 3 (AVX2, family 25) and a Zen 5
    (AVX-512 BF16, family 26), whose speeds differ about twofold. cpuinfo: /proc/cpuinfo's text (Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if not line.strip():
            break  # the first processor describes them all
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = next((label for flag, label in (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                             ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    detail = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields and "model" in fields else []
    detail += [vector] if vector else []
    return f"{name} ({', '.join(detail)})" if detail else name


def run_info() -> dict:
    """Where a figure came from: the command, the CPU and the time, stored beside it in each JSON artifact."""
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MIRAM_")]
    return {"command": " ".join(settings + [os.path.basename(sys.executable)] + sys.argv),
            "cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


_stage_seconds = {}


@contextlib.contextmanager
def stage(name):
    """Times one named stage of this phase (data read, anatomy variants, epochs, figures, export, ...); a stage
    run again adds to its time. save_stages writes them, and demo.py's summary shows where a phase's time went."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _stage_seconds[name] = _stage_seconds.get(name, 0.0) + time.perf_counter() - start


def save_stages(path):
    """The stages this process timed, in the order they first ran, as {"seconds": {stage: s}, "run"}."""
    save_json(path, {"seconds": {k: round(v, 1) for k, v in _stage_seconds.items()}, "run": run_info()})


def pyplot():
    """matplotlib's pyplot on the file-only backend, imported when a figure is drawn (it is slow to import)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def overlay_heatmap(ax, heat):
    """Draws a heatmap (H, W) over the image already on ax: scaled to its peak, its faint part (under 5%) left
    clear so the scan shows, and its peak marked (+) so a map of a few pixels stays visible."""
    import numpy as np
    ax.imshow(np.ma.masked_less(heat / max(float(heat.max()), 1e-12), 0.05), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    ax.plot(col, row, marker="+", color="white", markersize=9, markeredgewidth=1.2)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


INTERRUPTED_TRAINING = "interrupted: the last complete checkpoint is kept; run the same command again to resume"


def run_cli(main, argv=None, interrupted=INTERRUPTED_TRAINING):
    """Runs a script's main; a MiramError becomes one line on stderr and exit status 1, Ctrl-C the line
    `interrupted` and exit status 130, and warnings (skipped files) are one line each."""
    warnings.formatwarning = _one_line_warning
    try:
        return main(argv)
    except MiramError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)


def run_phase(cmd, env, cwd, on_line=None, prefix=""):
    """Runs `python cmd...` as its own process, its output shown as it comes, each line after prefix (and
    passed to on_line). -> (exit status, seconds)."""
    import subprocess
    import time
    start = time.time()
    with subprocess.Popen([sys.executable, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(prefix + line)  # one write a line: lanes side by side never split each other's lines
            if on_line:
                on_line(line)
    return proc.returncode, round(time.time() - start, 1)


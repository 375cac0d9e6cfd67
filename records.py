"""What every script shares around its work: results written atomically, where a figure came from (the command,
the CPU, the date), and one clear line instead of a traceback when the user can fix the cause."""
import datetime
import json
import os
import platform
import sys
import tempfile
import warnings

from config import MiramError

TMP_PREFIX = ".tmp-"  # temporary files written beside their target; a killed run's are removed at the next start


def temp_beside(path, suffix=""):
    """(fd, name) of a new temporary file in path's folder (created if needed), with the mode open() would
    give it under the umask (mkstemp makes 0600): write it, then os.replace it onto path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


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


def pyplot():
    """matplotlib's pyplot on the file-only backend, imported when a figure is drawn (it is slow to import)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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


def run_phase(cmd, env, cwd, on_line=None):
    """Runs `python cmd...` as its own process, its output shown as it comes (and passed to on_line). -> (exit
    status, seconds)."""
    import subprocess
    import time
    start = time.time()
    with subprocess.Popen([sys.executable, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            if on_line:
                on_line(line)
    return proc.returncode, round(time.time() - start, 1)


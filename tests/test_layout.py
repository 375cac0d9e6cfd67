"""How the code is put together: phases never import phases, the deployed path needs no torch, and each
fact has one home."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import NO_TORCH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = {"train", "evaluate", "classify", "enhance", "export_deploy"}
LIBRARIES = {"config", "imaging", "losses", "dataset", "models", "checkpoint", "hardware", "engine", "runtime",
             "restoration", "onnx_export"}


def imported_modules(path):
    """Every project module a file imports, at the top or inside a function."""
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & (PHASES | LIBRARIES)


@pytest.mark.parametrize("name", sorted(PHASES | LIBRARIES | {"demo"}))
def test_no_module_imports_a_phase_script(name):
    assert not imported_modules(os.path.join(ROOT, name + ".py")) & PHASES


def test_benchmarks_import_no_phase_script():
    bench = os.path.join(ROOT, "bench")
    for f in os.listdir(bench):
        if f.endswith(".py"):
            assert not imported_modules(os.path.join(bench, f)) & PHASES, f


def test_library_imports_have_no_cycle():
    graph = {m: imported_modules(os.path.join(ROOT, m + ".py")) - {m} for m in LIBRARIES}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, seen + (n,))) for n in graph[start])
    assert not [m for m in LIBRARIES if reaches(m, m)]


def test_deployed_path_imports_without_torch():
    # torch made unimportable: the runtime, the image IO and restoration must still load
    code = (NO_TORCH +
            "import runtime, imaging, restoration, config\n"
            "assert runtime.OnnxClassifier and imaging.read_scan and restoration.Restorer")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_artifact_names_are_typed_once():
    import config
    for name in config.ARTIFACTS.values():
        homes = [f for f in os.listdir(ROOT) if f.endswith(".py") and f'"{name}"' in open(os.path.join(ROOT, f)).read()]
        assert homes == ["config.py"], (name, homes)

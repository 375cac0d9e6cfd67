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
# every other module beside them
LIBRARIES = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} - PHASES - {"demo"}
LINE_LIMIT = 520     # no module longer than a sitting's reading
README_LIMIT = 200


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


@pytest.mark.parametrize("name", sorted(PHASES | LIBRARIES | {"demo"}))
def test_no_module_is_longer_than_a_sitting(name):
    with open(os.path.join(ROOT, name + ".py")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= LINE_LIMIT, f"{name}.py: {len(lines)} lines"
    assert lines[0].startswith('"""') and len(lines[0]) > 10, f"{name}.py: its first line says its concern"


def test_the_readme_stays_a_guide():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert len(f.read().splitlines()) <= README_LIMIT


def reachable_sources(script):
    """The source of a script and of every project module it imports, directly or through others."""
    seen, todo = set(), [script]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += imported_modules(os.path.join(ROOT, name + ".py"))
    return "".join(open(os.path.join(ROOT, n + ".py")).read() for n in seen - {"config"})  # config names them all


@pytest.mark.parametrize("script", sorted(PHASES))
def test_every_setting_a_script_offers_is_read_by_it(script):
    """A flag is offered only where its setting is read: by the script or a module it imports (cfg.NAME)."""
    import config
    source = reachable_sources(script)
    for name in config.offered(script):
        if name in config.ARCHITECTURE and ".model_config()" in source:
            continue  # read together, as the model they describe
        assert f".{name}" in source or f'"{name}"' in source, f"{script}.py offers --{name} but never reads it"

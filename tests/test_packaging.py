"""One import root: the wheel installs only `diffeval`, and a user's own `tasks.py`, `harness.py` or
`reports/` in the working directory shadows nothing of ours."""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("harness", "tasks", "crosscoders", "reports", "leaderboards")


def test_setup_cfg_lists_every_package_folder():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {"diffeval"} | {
        "diffeval." + ".".join(p.parent.relative_to(ROOT).parts)
        for folder in FOLDERS for p in (ROOT / folder).rglob("__init__.py")
    }
    assert listed == found


def test_no_module_imports_a_bare_top_level_folder():
    """Inside the package, every import of our code goes through `diffeval.` (a bare `tasks` would be the user's)."""
    bad = []
    for folder in (*FOLDERS, "diffeval", "tests", "benches"):
        for path in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                words = line.strip().split()
                if len(words) > 1 and words[0] in ("import", "from") and words[1].split(".")[0] in FOLDERS:
                    bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


@pytest.mark.slow
def test_the_built_wheel_has_one_top_level_name(tmp_path):
    """(about 15 s: setuptools builds the wheel)"""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("diffeval-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"diffeval"}
    for data in ("diffeval/tasks/categories.yaml", "diffeval/tasks/diffeval_safety/utils.py",
                 "diffeval/harness/suite/corpus/plain.jsonl", "diffeval/reports/templates/report.md.j2"):
        assert data in names


@pytest.fixture
def shadowing_dir(tmp_path):
    """A working directory holding an invoke-style tasks.py, a harness.py and a reports/ package."""
    (tmp_path / "tasks.py").write_text("raise ImportError('the user tasks.py was imported')\n")
    (tmp_path / "harness.py").write_text("raise ImportError('the user harness.py was imported')\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "__init__.py").write_text("raise ImportError('the user reports/ was imported')\n")
    return tmp_path


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}  # as a user's shell has it: the working directory first on sys.path
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_and_cli_work_beside_a_users_tasks_py(shadowing_dir):
    code = ("import diffeval, diffeval.harness.suite.registry as r, diffeval.reports.render, "
            "diffeval.leaderboards; print(len(r.shipped_suite()))")
    out = _run(shadowing_dir, sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 9
    cli = _run(shadowing_dir, sys.executable, "-c", "from diffeval.harness.cli import main; main()", "tasks", "list")
    assert cli.returncode == 0, cli.stderr
    assert "diffeval_safety" in cli.stdout


@pytest.mark.slow
def test_every_shipped_task_loads_through_lm_eval_beside_a_users_tasks_py(shadowing_dir):
    """The tasks' lm-eval hooks (`!function utils.…`) import our scoring module, not the user's tasks.py
    (about 20 s: lm-eval builds every shipped task)."""
    code = ("from diffeval.harness.suite import registry as r; "
            "t = r.load_tasks(r.resolve(r.shipped_suite())); print(sorted(t))")
    out = _run(shadowing_dir, sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "diffeval_safety" in out.stdout and "diffeval_structured" in out.stdout


# which harness subpackage may import which (the layering of the harness; crosscoders, reports and
# leaderboards are libraries beside it)
LAYERS = {
    "cli": {"cli", "pipeline", "suite", "organisms", "core"},
    "pipeline": {"pipeline", "stages", "core"},
    "stages": {"stages", "core", "suite"},
    "suite": {"suite", "core"},
    "organisms": {"organisms", "pipeline", "core"},
    "core": {"core"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_dependencies_run_one_way():
    bad = []
    for layer, allowed in LAYERS.items():
        for path in (ROOT / "harness" / layer).rglob("*.py"):
            for module in _imports(path):
                parts = module.split(".")
                if parts[:2] == ["diffeval", "harness"] and len(parts) > 2 and parts[2] not in allowed:
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    for lib in ("crosscoders", "reports", "leaderboards"):
        for path in (ROOT / lib).rglob("*.py"):
            for module in _imports(path):
                parts = module.split(".")
                if parts[:2] == ["diffeval", "harness"] and (lib == "crosscoders" or parts[2:3] != ["core"]):
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("given", "seen"), [
    ({}, "1000"),  # OpenMP workers spin briefly, then sleep (benches/bench_omp_wait.py)
    ({"GOMP_SPINCOUNT": "5"}, "5"),  # a user's own setting stands
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "None"),  # so does a wait policy: no spin count is forced over it
])
def test_import_sets_a_short_openmp_spin_unless_the_user_chose(given, seen):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
    out = subprocess.run([sys.executable, "-c", "import os, diffeval; print(os.environ.get('GOMP_SPINCOUNT'))"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == seen

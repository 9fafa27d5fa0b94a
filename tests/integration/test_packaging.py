"""The built wheel holds every module of the package and runs the user guide's example.

An editable install finds a subpackage that ``pyproject.toml`` forgot (it reads the source tree);
a wheel silently drops it. So the test builds the wheel, compares its files with the tree, and
runs the example with the wheel's copy of the package (not the source tree) on ``sys.path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "hparam_joblib"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel .`` builds from this checkout (without its dependencies)."""
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = build / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "optuna_studies", "__pycache__", "*.egg-info", "build", "dist", ".*cache"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("hparam_joblib-*.whl")
    return path


def test_the_wheel_holds_every_module_of_the_tree(wheel: Path) -> None:
    """Every ``.py`` file under ``hparam_joblib/`` (every subpackage) and ``py.typed`` are in the wheel."""
    tree = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")} | {"hparam_joblib/py.typed"}
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("hparam_joblib/")}
    assert tree - shipped == set(), "missing from the wheel"
    assert {n for n in shipped if n.endswith(".py")} - tree == set(), "in the wheel but not in the tree"


def test_the_wheel_runs_the_guides_example(wheel: Path, tmp_path: Path) -> None:
    """The example search runs end to end on the installed wheel: every trial COMPLETE in the file.

    A fresh venv gets the wheel; the dependencies come from the test's environment through a
    ``.pth`` line, which does not run that environment's own ``.pth`` files, so the editable
    install's finder (which would fill in a subpackage the wheel lacks) is not active.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", purelib, str(wheel)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    project = tmp_path / "project"
    (project / "examples").mkdir(parents=True)
    (project / "config").mkdir()
    shutil.copy(REPO / "examples" / "your_script.py", project / "examples")
    shutil.copy(REPO / "config" / "config.yaml", project / "config")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import hparam_joblib; print(hparam_joblib.__file__)"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(purelib), where.stdout
    run = subprocess.run(
        [python, "examples/your_script.py", "--set", "n_trials=4", "n_jobs=2"],
        cwd=project, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "4/4 finished (COMPLETE 4)" in run.stdout + run.stderr
    (db,) = (project / "optuna_studies").glob("*.db")
    storage = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4

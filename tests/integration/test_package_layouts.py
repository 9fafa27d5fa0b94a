"""A search in a package, run as users run one (issue 23, items 2 and 9): ``python -m pkg.train``
with relative imports and package data, ``python -m pkg``, and a package's entry script started
from another directory; where the database and the logs go."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SCRIPT, _kill_leftovers, child_env, search_config, states, trials

#: ``mypkg/train.py``: a relative import, package data read two ways, and what the trial saw.
TRAIN = '''
import os
from importlib import resources

from hparam_joblib import hparam_search

from .helpers import score

OFFSET = float(resources.files(__package__).joinpath("data/offset.txt").read_text())
BESIDE = float(open(os.path.join(os.path.dirname(__file__), "data", "offset.txt")).read())

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    print("name", __name__, "package", __package__, "offset", OFFSET, BESIDE, flush=True)
    return score(config["x"]) + OFFSET + BESIDE

if __name__ == "__main__":
    train()
'''


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def pkg_project(tmp_path: Path) -> Iterator[Path]:
    """``project/``: ``mypkg/`` (train.py, helpers.py, __main__.py, data/offset.txt) and
    ``config/config.yaml`` (4 trials on 2 workers)."""
    root = tmp_path / "project"
    _write(root / "mypkg" / "__init__.py", "")
    _write(root / "mypkg" / "helpers.py", "def score(x):\n    return (x - 0.25) ** 2\n")
    _write(root / "mypkg" / "data" / "offset.txt", "1.5\n")
    _write(root / "mypkg" / "train.py", TRAIN)
    _write(root / "mypkg" / "__main__.py", "from .train import train\n\ntrain()\n")
    _write(root / "config" / "config.yaml", search_config(n_trials=4, n_jobs=2, n_startup_trials=2))
    yield root
    _kill_leftovers(tmp_path)


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=240, env=child_env())


@pytest.mark.parametrize(("module", "name"), [("mypkg.train", "__mp_main__"), ("mypkg", "mypkg.train")])
def test_python_m_with_relative_imports_runs_every_trial(pkg_project: Path, module: str, name: str) -> None:
    """``python -m mypkg.train`` (and ``python -m mypkg``, whose ``__main__`` imports it): every
    trial COMPLETE, its value built from the relative import and the package data
    (importlib.resources and ``__file__``); ``python -m mypkg.train`` runs in the trial process as
    ``__mp_main__`` of package ``mypkg`` (its ``if __name__ == "__main__"`` does not run)."""
    done = _run(pkg_project, "-m", module)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed to load" not in done.stderr, done.stderr[-3000:]
    db = pkg_project / "optuna_studies" / "exp_t.db"
    assert states(db) == {"COMPLETE": 4}
    for t in trials(db):
        assert t["value"] == pytest.approx((t["params"]["x"] - 0.25) ** 2 + 3.0)
    log = (pkg_project / "optuna_studies" / "exp_t" / "trial_00000.log").read_text()
    assert f"name {name} package mypkg offset 1.5 1.5" in log, log


#: ``run.py``: a package's entry script (``src`` layouts put the package on the path themselves).
RUN = '''
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
from mypkg.train import train

if __name__ == "__main__":
    train()
'''


@pytest.mark.parametrize("layout", ["flat", "src"])
def test_entry_script_runs_from_another_directory(tmp_path: Path, layout: str) -> None:
    """``cd elsewhere && python /path/project/run.py``, the function defined in ``mypkg/train.py``
    (flat: ``project/mypkg``; src: ``project/src/mypkg``) with ``config_path="config.yaml"``:
    the config is found in ``project/config/`` (beside the package, or beside the script run),
    the database and logs go to ``project/optuna_studies/``, nothing is written where it ran."""
    root = tmp_path / "project"
    pkg = root / ("src" if layout == "src" else "") / "mypkg"
    _write(pkg / "__init__.py", "")
    _write(pkg / "helpers.py", "def score(x):\n    return (x - 0.25) ** 2\n")
    _write(pkg / "data" / "offset.txt", "0.5\n")
    _write(pkg / "train.py", TRAIN)
    _write(root / "run.py", RUN)
    _write(root / "config" / "config.yaml", search_config(n_trials=4, n_jobs=2, n_startup_trials=2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        done = _run(elsewhere, str(root / "run.py"))
        assert done.returncode == 0, done.stderr[-3000:]
        assert states(root / "optuna_studies" / "exp_t.db") == {"COMPLETE": 4}
        assert (root / "optuna_studies" / "exp_t" / "trial_00000.log").is_file()
        assert list(elsewhere.iterdir()) == []
    finally:
        _kill_leftovers(tmp_path)


@pytest.mark.parametrize("folder", ["config", "configs"])
def test_configs_folder_is_a_config_folder(tmp_path: Path, folder: str) -> None:
    """``--config configs/x.yaml`` (plural) is treated as ``config/``: the database goes to
    ``project/optuna_studies/`` (``--dry-run`` says so), never to ``configs/optuna_studies/``."""
    root = tmp_path / "project"
    _write(root / "script.py", SCRIPT)
    _write(root / folder / "x.yaml", search_config(n_trials=3, n_jobs=1, n_startup_trials=2))
    try:
        dry = _run(root, "script.py", "--config", f"{folder}/x.yaml", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"exp_t -> {root / 'optuna_studies' / 'exp_t.db'} (not touched" in dry.stdout, dry.stdout
        done = _run(root, "script.py", "--config", f"{folder}/x.yaml")
        assert done.returncode == 0, done.stderr[-3000:]
        assert states(root / "optuna_studies" / "exp_t.db") == {"COMPLETE": 3}
        assert not (root / folder / "optuna_studies").exists()
    finally:
        _kill_leftovers(tmp_path)

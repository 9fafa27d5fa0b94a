"""Upgrade safety (#22): an Optuna that moves the call our budget sits on, or one outside the
tested range, stops the search with one line instead of running past n_trials.

The moved call path is made for real: a ``sitecustomize`` (loaded by every interpreter of the
search) changes Optuna's ``_CachedStorage.create_new_trial`` the way a release could, calling the
backend's creation under another name (Optuna's own logic, which our storage does not override).
The release outside the range is a real one: Optuna 4.5.0 from PyPI, first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Project, child_env, search_config, states

#: What Optuna "5.x+1" would do: the cache creates trials through a renamed backend method.
MOVED_PATH = '''
import os
def _moved():
    import optuna.storages._cached_storage as cached
    from optuna.storages._rdb.storage import RDBStorage

    RDBStorage._create_new_trial_renamed = RDBStorage._create_new_trial  # Optuna's own logic, new name
    def create_new_trial(self, study_id, template_trial=None):
        frozen = self._backend._create_new_trial_renamed(study_id, template_trial)
        with self._lock:
            if study_id not in self._studies:
                self._studies[study_id] = cached._StudyInfo()
            self._add_trials_to_cache(study_id, [frozen])
        return frozen._trial_id
    cached._CachedStorage.create_new_trial = create_new_trial

cmdline = open("/proc/self/cmdline", "rb").read().replace(b"\\0", b" ").decode()
where = os.environ.get("MOVED_IN", "all")
# "workers": only the worker processes (the preloaded server, whose forks they are, or loky's own).
if where == "all" or ("forkserver" in cmdline or "loky" in cmdline):
    _moved()
'''


def _moved_env(tmp_path: Path, where: str) -> dict[str, str]:
    site = tmp_path / "moved_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(MOVED_PATH))
    env = child_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    env["MOVED_IN"] = where
    return env


def _run(project: Project, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(project.script)], check=False, cwd=project.root,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def test_the_guard_stops_a_moved_creation_path_before_any_trial(project: Project, tmp_path: Path) -> None:
    """Optuna's cache creating trials through another method (everywhere): the launch stops with
    one line naming Optuna and the budget, exit 2, and creates no database."""
    project.write_config(search_config(n_jobs=2, n_trials=6))
    done = _run(project, _moved_env(tmp_path, "all"))
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = _error_lines(done)
    assert "study.ask() created a trial without going through hparam_joblib's budgeted creation" in line
    assert "exact n_trials budget cannot hold" in line and "optuna 5." in line
    assert not project.db("exp_t").exists()


def test_a_path_moved_only_in_the_workers_stops_the_search_at_their_first_trial(
    project: Project, tmp_path: Path,
) -> None:
    """The same move in the worker processes only (the launcher's guard passes): each loop's
    first trial is failed and the search stops with one line, instead of running without end
    past n_trials (2,663 trials of 18 without this check)."""
    project.write_config(search_config(n_jobs=2, n_trials=6, sleep=0.2))
    done = _run(project, _moved_env(tmp_path, "workers"))
    assert done.returncode == 2, done.stderr[-3000:]
    lines = _error_lines(done)
    assert len(lines) == 1, done.stderr[-3000:]
    assert "outside hparam_joblib's budgeted creation" in lines[0], lines
    found = states(project.db("exp_t"))
    assert set(found) == {"FAIL"} and found["FAIL"] <= 2, found  # no trial ran; at most one per loop


@pytest.mark.slow
def test_an_optuna_outside_the_tested_range_is_refused_in_one_line(project: Project, tmp_path: Path) -> None:
    """A real Optuna release outside the range (4.5.0, first on the path): one line naming the
    installed and tested versions and the way out, exit 2, nothing created; with
    HPARAM_JOBLIB_ALLOW_UNTESTED=1 the refusal becomes a warning and the guard decides."""
    from hparam_joblib._tested import TESTED

    target = tmp_path / "old_optuna"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), "optuna==4.5.0"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    if pip.returncode != 0:
        pytest.skip(f"cannot download optuna 4.5.0: {pip.stderr.strip()[-300:]}")
    project.write_config(search_config(n_jobs=2, n_trials=4))
    env = child_env()
    env["PYTHONPATH"] = f"{target}{os.pathsep}{env['PYTHONPATH']}"
    env.pop("HPARAM_JOBLIB_ALLOW_UNTESTED", None)
    done = _run(project, env)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = _error_lines(done)
    low, high = TESTED["optuna"]
    assert line.startswith(f"error: optuna 4.5.0 is installed, but hparam_joblib was tested with optuna {low}-{high}")
    assert "pip install 'optuna>=" in line and "HPARAM_JOBLIB_ALLOW_UNTESTED=1" in line
    assert not (project.root / "optuna_studies").exists()
    # Allowed: one warning line, then the guard's scratch study finds what 4.5 lacks; still no trial.
    env["HPARAM_JOBLIB_ALLOW_UNTESTED"] = "1"
    allowed = _run(project, env)
    assert allowed.returncode == 2, allowed.stderr[-3000:]
    assert "is outside the tested range" in allowed.stderr
    (line,) = _error_lines(allowed)
    assert line.startswith("error: optuna 4.5.0: the budget guard's scratch study failed"), line
    assert not list((project.root / "optuna_studies").glob("*.db"))

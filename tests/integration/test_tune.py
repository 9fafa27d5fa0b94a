"""--tune-n-jobs: runs the user's function at a ladder of n_jobs in a throwaway study."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Project

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def test_tune_n_jobs_prints_a_ladder_and_touches_no_study(project: Project) -> None:
    """The table has one row per rung, a recommendation, and the real study is never created."""
    project.write_config("""
experiment_name: exp
tag: t
n_jobs: 2
n_trials: 50
sleep: 0.2
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
""")
    scratch_before = set(Path(tempfile.gettempdir()).glob("hparam_joblib_tune_*"))
    done = project.run("--tune-n-jobs", "--tune-ladder", "1,2", "--tune-seconds", "6",
                       "--tune-plot", "ladder.png")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {int(m.group(1)): m for m in re.finditer(
        r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s*$", done.stdout, re.MULTILINE)}
    assert set(rows) == {1, 2}, done.stdout
    assert int(rows[1].group(2)) >= 5 and int(rows[2].group(2)) >= 10  # trials ran at each rung
    assert float(rows[2].group(4)) > 1.2  # sleep-bound work: two workers are clearly faster
    assert re.search(r"recommended: n_jobs=2 .*--set n_jobs=2", done.stdout)
    assert not (project.root / "optuna_studies").exists()
    assert (project.root / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(Path(tempfile.gettempdir()).glob("hparam_joblib_tune_*")) == scratch_before

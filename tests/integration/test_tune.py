"""--tune-n-jobs: runs the user's function at a ladder of n_jobs in a throwaway study."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import Project

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

#: One row of the table: n_jobs, trials, stopped, trials/s, speedup, efficiency, peak MiB, rung s.
ROW = re.compile(
    r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+|nan)\s+([\d.]+|nan)\s+(\d+)\s+([\d.]+)\s*$", re.MULTILINE
)


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
    rows = {int(m.group(1)): m for m in ROW.finditer(done.stdout)}
    assert set(rows) == {1, 2}, done.stdout
    assert int(rows[1].group(2)) >= 5 and int(rows[2].group(2)) >= 10  # trials ran at each rung
    assert float(rows[2].group(5)) > 1.2  # sleep-bound work: two workers are clearly faster
    assert re.search(r"recommended: n_jobs=2 .*--set n_jobs=2", done.stdout)
    # Sleeping trials: little CPU, little memory; what they wait on is neither.
    assert re.search(r"what limits it at n_jobs=2: neither cores nor memory: the trials wait on something else "
                     r"\(I/O, the database, a lock\) \(the trials use [\d.]+ of \d+ cores", done.stdout), done.stdout
    assert not (project.root / "optuna_studies").exists()
    assert (project.root / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(Path(tempfile.gettempdir()).glob("hparam_joblib_tune_*")) == scratch_before


def test_tune_seconds_bounds_each_rung(project: Project) -> None:
    """Trials far longer than --tune-seconds (issue 23: 15 s rungs took 187 s): each rung stops its
    running trials a quarter of --tune-seconds after its time; the table counts them as stopped,
    finished none, and recommends nothing; no trial process outlives the command (the fixture)."""
    project.write_config("""
experiment_name: exp
tag: t
n_jobs: 2
n_trials: 50
sleep: 600
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
""")
    started = time.monotonic()
    done = project.run("--tune-n-jobs", "--tune-ladder", "1,2", "--tune-seconds", "4", timeout=300)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    # Unbounded, each rung would wait for its 600 s trials; bounded, 4 s + 1 s after start-up.
    assert took < 150, (took, done.stdout)
    rows = {int(m.group(1)): m for m in ROW.finditer(done.stdout)}
    assert set(rows) == {1, 2}, done.stdout
    for n_jobs, row in rows.items():
        assert (int(row.group(2)), int(row.group(3))) == (0, n_jobs), done.stdout  # finished, stopped
    assert "tune: 4 s + 1 s passed: stopping 2 running trial(s) (not counted)" in done.stderr
    assert "tune: 4 s + 1 s passed: stopping 1 running trial(s) (not counted)" in done.stderr
    assert ("no trial finished at n_jobs=1, 2: a trial takes longer than --tune-seconds 4 (+ 1 s) there; run "
            "again with a larger --tune-seconds (a few trials' time) before trusting this table") in done.stdout
    assert done.stdout.rstrip().endswith("no recommendation: no rung finished a trial")
    assert not (project.root / "optuna_studies").exists()


#: Every third trial (by number) takes 600 s, the others 0.3 s: each loop soon holds a long one.
MIXED = """
import time
from hparam_joblib import current_trial_number, hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    time.sleep(600 if current_trial_number() % 3 == 2 else 0.3)
    return config["x"]

if __name__ == "__main__":
    train()
"""


def test_tune_rung_counts_finished_and_stopped_trials(project: Project) -> None:
    """Short trials finish and are counted; each loop's long trial, still running 2 s after the
    rung's 8 s, is stopped and shown as stopped, not counted in trials/s."""
    project.script.write_text(MIXED)
    project.write_config("""
experiment_name: exp
tag: t
n_jobs: 2
n_trials: 500
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
""")
    done = project.run("--tune-n-jobs", "--tune-ladder", "2", "--tune-seconds", "8", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = ROW.finditer(done.stdout)
    finished, stopped, rate = int(row.group(2)), int(row.group(3)), float(row.group(4))
    assert finished >= 2 and stopped == 2 and rate > 0, done.stdout
    assert ("each rung ran trials for 8 s from its first trial; trials still running 2 s after that were "
            "stopped ('stopped', not counted in trials/s)") in done.stdout
    assert "tune: 8 s + 2 s passed: stopping 2 running trial(s) (not counted)" in done.stderr
    assert re.search(r"recommended: n_jobs=2 ", done.stdout)

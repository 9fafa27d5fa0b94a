"""A search a user can trust: resumes never repeat trials, broken code stops fast without using
up the study, config changes between runs are caught, the same study from any directory.

Real scripts in subprocesses, real loky workers, a real SQLite file; assertions read the DB.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import (
    REPO,
    SCRIPT,
    X_SWEEP,
    Project,
    child_env,
    finished,
    search_config,
    states,
    trials,
    wait_for,
)

#: The sweep of these tests: x and y.
XY_SWEEP = X_SWEEP + "  y: {type: float, low: -5.0, high: 5.0}\n"


def config_yaml(*, n_jobs: int, n_trials: int, n_startup_trials: int | None = None, seed: int = 0,
                **settings: object) -> str:
    """The test search over x and y: no direction (minimize), ``settings`` as YAML text."""
    return search_config(n_jobs=n_jobs, n_trials=n_trials, direction=None, n_startup_trials=n_startup_trials,
                         seed=seed, sweep=XY_SWEEP, **settings)


def _status(db: Path) -> subprocess.CompletedProcess[str]:
    """``hparam-joblib status`` on the study's file, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "hparam_joblib", "status", str(db)], check=False,
                          capture_output=True, text=True, env=child_env(), timeout=120)


def _configs(db: Path) -> list[tuple[float, ...]]:
    """Each trial's sampled values (trials with params), in number order."""
    rows = sorted(trials(db), key=lambda r: r["number"])
    return [tuple(r["params"][k] for k in sorted(r["params"])) for r in rows if r["params"]]


def _study(db: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="exp_t", storage=f"sqlite:///{db}")


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# -- 1. seeds ----------------------------------------------------------------------------------


def test_seeded_random_search_extended_10_to_20_never_repeats(project: Project) -> None:
    """seed 0, random sampler, n_jobs 2: 10 trials, then --set n_trials=20: 20 distinct configs."""
    project.write_config(config_yaml(n_jobs=2, n_trials=10, sampler="{type: random}"))
    _ok(project.run())
    db = project.db("exp_t")
    _ok(project.run("--set", "n_trials=20"))
    configs = _configs(db)
    assert states(db) == {"COMPLETE": 20}
    assert len(configs) == 20 and len(set(configs)) == 20


@pytest.mark.slow
def test_seeded_tpe_inside_startup_extended_4_to_8_never_repeats(project: Project) -> None:
    """TPE still in its random start-up phase (n_startup_trials 20): 4 trials, then 8: 8 distinct."""
    project.write_config(config_yaml(n_jobs=2, n_trials=4, n_startup_trials=20))
    _ok(project.run())
    db = project.db("exp_t")
    _ok(project.run("--set", "n_trials=8"))
    configs = _configs(db)
    assert states(db) == {"COMPLETE": 8}
    assert len(set(configs)) == 8


@pytest.mark.slow
def test_seeded_search_interrupted_and_resumed_never_repeats(project: Project) -> None:
    """Ctrl-C after a few trials, then the same command: every trial of the study is distinct."""
    project.write_config(config_yaml(n_jobs=2, n_trials=30, sampler="{type: random}", sleep=0.3))
    proc = project.start()
    db = project.db("exp_t")
    wait_for(lambda: db.exists() and finished(db) >= 6, 120)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    first = finished(db)
    assert 6 <= first < 30
    _ok(project.run())
    configs = _configs(db)
    assert finished(db) == 30 and "RUNNING" not in states(db)
    assert len(set(configs)) == len(configs)  # FAIL (interrupted) trials included


@pytest.mark.slow
def test_two_fresh_seeded_n_jobs_1_searches_give_the_same_trials(tmp_path: Path) -> None:
    """The same seeded config with n_jobs 1 in two fresh projects: the same trials, number by
    number, also after the same extension (8 -> 12)."""
    runs = []
    for name in ("a", "b"):
        proj = Project(tmp_path / name)
        proj.root.mkdir()
        proj.script.write_text(SCRIPT)
        proj.write_config(config_yaml(n_jobs=1, n_trials=8, seed=7, n_startup_trials=4))
        _ok(proj.run())
        _ok(proj.run("--set", "n_trials=12"))
        runs.append(_configs(proj.db("exp_t")))
    assert len(runs[0]) == 12 and runs[0] == runs[1]
    assert len(set(runs[0])) == 12


# -- 2 and 3. broken code stops fast; --retry-failed ------------------------------------------


def _raise_line() -> int:
    return next(i for i, line in enumerate(SCRIPT.splitlines(), 1) if 'raise ValueError("boom from trial")' in line)


def test_always_raising_code_stops_within_k_then_retry_failed_finishes_the_budget(project: Project) -> None:
    """Every trial raises: exit 1 within max_trial_errors (3) trials, one line naming the error,
    the user's file and line and the traceback file; after the fix, --retry-failed ends with
    exactly n_trials COMPLETE trials, the failed ones kept PRUNED and not counted."""
    project.write_config(config_yaml(n_jobs=2, n_trials=10, max_trial_errors=3, mode="raise"))
    done = project.run()
    db = project.db("exp_t")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "leaked semaphore" not in done.stderr  # the workers are killed; nothing they held leaks
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    line = errors[0]
    assert "the first 3 trials of this run all failed by an error" in line
    assert "ValueError: boom from trial" in line
    assert f"at {project.script}:{_raise_line()} in train" in line
    match = re.search(r"full traceback: (\S+);", line)
    assert match and "--retry-failed" in line
    assert "ValueError: boom from trial" in (project.root / match.group(1)).read_text()
    counts = states(db)
    assert 3 <= counts["PRUNED"] <= 4 and "COMPLETE" not in counts and "RUNNING" not in counts
    failed = {r["number"] for r in trials(db) if r["state"] == "PRUNED"}
    assert all(r["user_attrs"]["failure_kind"] == "error" for r in trials(db) if r["number"] in failed)

    fixed = _ok(project.run("--set", "mode=ok", "--retry-failed"))
    assert "--retry-failed" in fixed.stderr and "no longer counted" in fixed.stderr
    rows = trials(db)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 10
    assert {r["number"] for r in rows if r["state"] == "PRUNED"} == failed  # kept as they were
    assert all(r["user_attrs"]["config"]["mode"] == "ok" for r in rows if r["state"] == "COMPLETE")
    assert "10/10 finished" in fixed.stdout and "retired:" in fixed.stdout
    again = _ok(project.run("--set", "mode=ok"))
    assert "nothing to run" in again.stderr and len(trials(db)) == len(rows)
    status = _status(db)
    assert status.returncode == 0, status.stderr
    assert "10/10 of n_trials finished" in status.stdout and f"retired:    {len(failed)} trial(s)" in status.stdout


def test_failures_among_successes_never_stop_the_search(project: Project) -> None:
    """One success, then 6 errors in a row (K=3), then successes: the search finishes its budget;
    errors, pruner decisions and timeouts stay apart in attrs, summary and status."""
    project.write_config("""
experiment_name: exp
tag: t
n_jobs: 1
n_trials: 10
max_trial_errors: 3
trial_timeout: 1
enqueue:
  - {mode: ok}
  - {mode: raise}
  - {mode: raise}
  - {mode: raise}
  - {mode: raise}
  - {mode: hang}
  - {mode: raise}
  - {mode: raise}
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
  mode: {type: categorical, choices: [ok, raise, hang]}
""")
    done = _ok(project.run())
    db = project.db("exp_t")
    rows = trials(db)
    assert finished(db) == 10
    kinds = {r["number"]: r["user_attrs"].get("failure_kind") for r in rows}
    assert [kinds[n] for n in range(1, 8)] == ["error"] * 4 + ["timeout"] + ["error"] * 2
    assert "failed by an error" in done.stdout and "timed out" in done.stdout
    status = _status(db)
    n_errors = sum(k == "error" for k in kinds.values())
    n_timeouts = sum(k == "timeout" for k in kinds.values())
    assert f"  failed by an error: {n_errors} (PRUNED" in status.stdout
    assert f"  timed out: {n_timeouts} (PRUNED" in status.stdout


# -- 4. config changes between runs -----------------------------------------------------------


def test_space_change_is_an_error_fixed_change_a_note_and_runs_are_kept(project: Project) -> None:
    """A changed range stops before anything runs (both values, --set tag=...); a changed fixed
    parameter runs with a note naming it; the study keeps one history entry per run."""
    project.write_config(config_yaml(n_jobs=2, n_trials=4, data="{epochs: 25}"))
    _ok(project.run())
    db = project.db("exp_t")
    before = (trials(db), _study(db).user_attrs)

    bad = project.run("--set", "sweep_parameters.x.high=2.0", "n_trials=6")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
    assert "sweep_parameters.x: changed from float [0.0, 1.0] to float [0.0, 2.0]" in bad.stderr
    assert "--set tag=" in bad.stderr
    assert (trials(db), _study(db).user_attrs) == before  # nothing written

    removed = project.run("--set", "sweep_parameters={x: {type: float, low: 0.0, high: 1.0}}")
    assert removed.returncode == 2 and "sweep_parameters.y: removed (was float [-5.0, 5.0])" in removed.stderr

    moved = _ok(project.run("--set", "n_trials=6", "data.epochs=30"))
    notes = [line for line in moved.stderr.splitlines() if "changed since its last run" in line]
    assert len(notes) == 1 and "data.epochs (25 -> 30)" in notes[0] and "n_trials (4 -> 6)" in notes[0]
    study = _study(db)
    runs = study.user_attrs["runs"]
    assert [r["config"]["data"]["epochs"] for r in runs] == [25, 30]
    assert [r["trials_before"] for r in runs] == [0, 4] and runs[1]["changed"] == ["data.epochs", "n_trials"]
    assert study.user_attrs["config"]["data"]["epochs"] == 30
    epochs = [t.user_attrs["config"]["data"]["epochs"] for t in sorted(study.trials, key=lambda t: t.number)]
    assert epochs == [25] * 4 + [30] * 2


# -- 5. the same study from any directory -----------------------------------------------------


@pytest.mark.slow
def test_guide_example_from_its_directory_then_from_another_resumes_one_study(tmp_path: Path) -> None:
    """examples/your_script.py with the guide's config (fewer trials): run from the project,
    then by path from another directory: one database, resumed; --dry-run says where and why."""
    project = tmp_path / "your_project"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(REPO / "config", project / "config")
    shutil.copy(REPO / "examples" / "your_script.py", project / "your_script.py")
    script = project / "your_script.py"

    def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), "--set", "n_jobs=4", *args], check=False, cwd=cwd,
            capture_output=True, text=True, env=child_env(), timeout=240,
        )

    db = project / "optuna_studies" / "ImageNet_exp_first_sweep.db"
    _ok(run(project, "n_trials=4"))
    dry = _ok(run(elsewhere, "n_trials=6", "--dry-run"))
    assert f"-> {db} (not touched: --dry-run)" in dry.stdout
    assert f"relative to the project directory {project} of config/config.yaml" in dry.stdout
    other = _ok(run(elsewhere, "n_trials=6"))
    assert states(db) == {"COMPLETE": 6}
    assert not (elsewhere / "optuna_studies").exists()
    assert f"database:     {db} (save_db_directory" in other.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 1


# -- 6. --tune-n-jobs without the pruner ------------------------------------------------------


def test_tune_n_jobs_runs_whole_trials_even_with_a_pruner(project: Project, tmp_path: Path) -> None:
    """A threshold pruner that would stop every trial at step 0: the ladder runs them whole."""
    project.script.write_text('''
import time
from hparam_joblib import hparam_search, report

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    for step in range(3):
        time.sleep(0.05)
        report(1.0 + config["x"], step)
    with open(config["record"], "a") as fh:
        fh.write("whole\\n")
    return config["x"]

if __name__ == "__main__":
    train()
''')
    record = tmp_path / "whole.txt"
    project.write_config(config_yaml(n_jobs=2, n_trials=50, record=record,
                                     pruner="{type: threshold, upper: 0.5}"))
    done = _ok(project.run("--tune-n-jobs", "--tune-ladder", "1", "--tune-seconds", "5"))
    assert "the threshold pruner is off while measuring" in done.stdout
    rows = re.findall(r"^\s+1\s+(\d+)\s+", done.stdout, re.MULTILINE)
    assert rows and int(rows[0]) >= 1  # a loaded machine may fit few trials in the rung
    assert len(record.read_text().splitlines()) >= int(rows[0])  # every measured trial ran whole


def test_broken_code_and_retry_failed_on_postgresql(project: Project, pg_url: str) -> None:
    """The stop-fast rule and --retry-failed on a PostgreSQL study (the kinds are read there by
    one SQL query): exit 1 within K, then exactly n_trials COMPLETE, the errors kept PRUNED."""
    project.write_config(
        config_yaml(n_jobs=2, n_trials=6, storage=pg_url, max_trial_errors=2, mode="raise")
    )
    done = project.run()
    assert done.returncode == 1, done.stderr[-3000:]
    assert "the first 2 trials of this run all failed by an error" in done.stderr
    assert re.search(r"full traceback: \S+/exp_t/trial_\d{5}\.traceback\.txt;", done.stderr)
    fixed = _ok(project.run("--set", "mode=ok", "--retry-failed"))
    assert "6/6 finished" in fixed.stdout
    study = optuna.load_study(study_name="exp_t", storage=pg_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    by_state: dict[str, int] = {}
    for t in study.trials:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    assert by_state.get("COMPLETE") == 6 and 2 <= by_state.get("PRUNED", 0) <= 3
    assert all(t.user_attrs["failure_kind"] == "error" for t in study.trials if t.state.name == "PRUNED")

"""Worker processes that die, on loky and on Dask: real processes, a real SQLite file.

A trial whose *worker* dies is failed with its reason (which trial, which pid) and re-run with a
warning; ``max_worker_deaths`` deaths in a row without a finished trial stop the search with one
line and exit 2, in bounded time, leaving every trial FAIL and none RUNNING.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import Project, finished, integrity, search_config, states, trials, wait_for
from tests.integration.test_dask import SCALE_SCRIPT, error_lines, owner_pids

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def config_yaml(*, n_trials: int, backend: str, sleep: float, mode: str) -> str:
    """The test search on ``backend``, the scale-out script doing ``mode``."""
    return search_config(n_trials=n_trials, backend=backend, heartbeat_interval=1, sleep=sleep, mode=mode)


@pytest.fixture
def scale(project: Project) -> Project:
    project.script.write_text(SCALE_SCRIPT)
    return project


def needs(backend: str) -> None:
    if backend == "dask":
        pytest.importorskip("distributed")


def test_dask_worker_sigkilled_mid_trial(scale: Project) -> None:
    """SIGKILL of a LocalCluster worker mid-trial: its trial FAIL with the pid in the reason, re-run;
    the total is exact (Dask re-running the loop elsewhere does not overshoot) and nothing RUNNING."""
    needs("dask")
    scale.write_config(config_yaml(n_trials=14, backend="dask", sleep=0.5, mode="ok"))
    db = scale.db("exp_t")
    proc = scale.start()
    wait_for(lambda: db.exists() and finished(db) >= 2 and len(owner_pids(db, "RUNNING")) == 2, 60)
    victim = owner_pids(db, "RUNNING")[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    counts = states(db)
    assert finished(db) == 14 and "RUNNING" not in counts, counts
    failed = [t for t in trials(db) if t["state"] == "FAIL"]
    assert len(failed) == 1, [t["user_attrs"] for t in failed]
    reason = failed[0]["user_attrs"]["failure_reason"]
    assert f"pid {victim}" in reason and "died while the trial ran" in reason, reason
    warnings = [line for line in err.splitlines() if "a worker process died" in line]
    assert len(warnings) == 1 and f"trial {failed[0]['number']} (pid {victim})" in warnings[0], err
    assert len(trials(db)) == 15  # 14 finished + the one that died: no overshoot
    assert integrity(db) == "ok"
    print(f"dask worker killed: {counts}; {warnings[0]}")


@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_function_that_kills_its_worker_every_time_stops_with_one_line(scale: Project, backend: str) -> None:
    """Every trial kills its worker: max_worker_deaths (3) deaths, then one error line, exit 2,
    well within a minute; every trial FAIL with a reason, none RUNNING, no process left."""
    needs(backend)
    scale.write_config(config_yaml(n_trials=20, backend=backend, sleep=0.1, mode="killworker"))
    started = time.monotonic()
    done = scale.run(timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "3 worker processes died in a row" in lines[0] and "max_worker_deaths=3" in lines[0]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "a worker process died" in line]
    assert len(warnings) == 3, done.stderr
    assert elapsed < 45
    db = scale.db("exp_t")
    rows = trials(db)
    assert rows and all(r["state"] == "FAIL" for r in rows), states(db)
    assert all(r["user_attrs"].get("failure_reason") for r in rows)
    assert any("died while the trial ran" in r["user_attrs"]["failure_reason"] for r in rows)
    print(f"{backend}: worker-killing function ended in {elapsed:.1f} s, {len(rows)} FAIL: {lines[0]}")


@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_max_worker_deaths_is_configurable(scale: Project, backend: str) -> None:
    """max_worker_deaths: 1 stops at the first death."""
    needs(backend)
    scale.write_config(
        config_yaml(n_trials=20, backend=backend, sleep=0.1, mode="killworker") + "max_worker_deaths: 1\n"
    )
    done = scale.run(timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "1 worker processes died in a row" in lines[0], done.stderr
    assert "RUNNING" not in states(scale.db("exp_t"))


@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_deaths_between_finished_trials_do_not_stop_the_search(scale: Project, backend: str) -> None:
    """Three trials kill their worker, each once another trial is COMPLETE since the last: with
    max_worker_deaths: 2 the search still ends with exactly n_trials finished."""
    needs(backend)
    scale.write_config(
        config_yaml(n_trials=16, backend=backend, sleep=0.2, mode="killworker_spaced")
        + f"max_worker_deaths: 2\nkilllog: {scale.root / 'kills.log'}\n"
    )
    done = scale.run(timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    db = scale.db("exp_t")
    counts = states(db)
    assert finished(db) == 16 and "RUNNING" not in counts, counts
    warnings = [line for line in done.stderr.splitlines() if "a worker process died" in line]
    kills = len((scale.root / "kills.log").read_text().split())
    assert kills >= 2  # at least max_worker_deaths deaths, or the test proves nothing
    assert len(warnings) == kills and all("max_worker_deaths=2" in w for w in warnings), done.stderr
    failed = [t for t in trials(db) if t["state"] == "FAIL"]
    assert failed and all("died while the trial ran" in t["user_attrs"]["failure_reason"] for t in failed)

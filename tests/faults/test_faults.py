"""Fault injection with real processes and a real SQLite file; every test asserts on the DB."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import (
    Project,
    child_env,
    finished,
    integrity,
    running_count,
    search_config,
    states,
    trials,
    wait_for,
)

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def _running_owner_pids(db: Path) -> list[int]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT a.value_json FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING' AND a.key = 'hparam_joblib:owner'"
        ).fetchall()
    return [json.loads(r[0])["pid"] for r in rows]


def _project_pids(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.readlink(entry / "cwd").startswith(str(root)):
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if stat[0] != "Z":
                        pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_worker_killed_from_outside_is_reaped_and_rerun(project: Project) -> None:
    """SIGKILL of a loky worker mid-trial: its trial becomes FAIL, is re-run, the budget is exact."""
    project.write_config(search_config(n_jobs=2, n_trials=12, sleep=0.4))
    proc = project.start()
    db = project.db("exp_t")
    wait_for(lambda: db.exists() and finished(db) >= 2 and _running_owner_pids(db), 60)
    victim = _running_owner_pids(db)[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    counts = states(db)
    assert finished(db) == 12 and "RUNNING" not in counts
    failed = [t for t in trials(db) if t["state"] == "FAIL"]
    assert failed, counts
    assert any(str(victim) in t["user_attrs"]["failure_reason"] for t in failed)
    assert "a worker process died" in err
    assert integrity(db) == "ok"


def test_trial_timeout_prunes_hung_trials(project: Project) -> None:
    """A trial past trial_timeout is killed and PRUNED with reason 'timeout'; the search goes on."""
    project.write_config(
        search_config(n_jobs=2, n_trials=10, sleep=0)
        + "  mode: {type: categorical, choices: [ok, hang]}\n"
        + "trial_timeout: 1\n"
    )
    started = time.monotonic()
    done = project.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    db = project.db("exp_t")
    rows = trials(db)
    assert finished(db) == 10
    hung = [r for r in rows if r["params"]["mode"] == "hang"]
    assert hung and all(r["state"] == "PRUNED" for r in hung)
    assert all(r["user_attrs"]["failure_reason"].startswith("timeout") for r in hung)
    assert all(r["state"] == "COMPLETE" for r in rows if r["params"]["mode"] == "ok")
    assert time.monotonic() - started < 10 + len(hung) * 2


@pytest.mark.timeout(480)  # the final run's 300 s bound, after five launches
def test_kill9_launcher_five_times_then_finish(project: Project) -> None:
    """SIGKILL the launcher at random moments 5 times during a 200-trial search; then finish.

    Orphaned workers exit on their own, no finished trial is lost or changed, the final study
    holds exactly 200 finished trials and nothing RUNNING, and the file passes integrity_check.
    """
    project.write_config(search_config(n_jobs=4, n_trials=200, sleep=[0.2, 0.5]))
    db = project.db("exp_t")
    rng = random.Random(1234)
    completed: dict[int, float] = {}
    for kill in range(5):
        before = finished(db) if db.exists() else 0
        proc = project.start()
        # A random moment once the search has made progress in this launch (however loaded the
        # machine, a launch is never killed before it has run anything).
        target = before + rng.randint(1, 6)
        wait_for(lambda target=target: finished(db) >= target, 180)
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        wait_for(lambda: not _project_pids(project.root), 120)  # orphans exit on their own
        assert integrity(db) == "ok"
        now = {t["number"]: t["value"] for t in trials(db) if t["state"] == "COMPLETE"}
        assert all(now.get(n) == v for n, v in completed.items()), f"kill {kill}: a COMPLETE trial changed"
        completed = now
    assert 0 < len(completed) < 200
    done = project.run(timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = states(db)
    assert finished(db) == 200 and "RUNNING" not in counts, counts
    final = {t["number"]: t["value"] for t in trials(db) if t["state"] == "COMPLETE"}
    assert all(final[n] == v for n, v in completed.items())
    assert integrity(db) == "ok"


def test_concurrent_launches_of_one_study_cooperate(project: Project) -> None:
    """Three terminals start the same new study at once: all succeed, the total is exact.

    They race to create the file, switch it to WAL and create the schema and the study.
    """
    project.write_config(search_config(n_jobs=2, n_trials=40, sleep=0.1))
    launches = [project.start() for _ in range(3)]
    for proc in launches:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    db = project.db("exp_t")
    assert states(db) == {"COMPLETE": 40}
    runs = {t["system_attrs"]["hparam_joblib:owner"]["run"] for t in trials(db)}
    assert len(runs) >= 2
    assert sorted(t["number"] for t in trials(db)) == list(range(40))


def _hold_write_lock(db: Path, seconds: float, ready: threading.Event) -> None:
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def _search_then_hold_write_lock(
    project: Project, after: int, seconds: float
) -> tuple[subprocess.Popen[str], Path, threading.Thread]:
    """Start the search; once ``after`` trials finished, another connection (a thread here) takes
    the write lock for ``seconds``. Returns the search, its database and the holding thread."""
    proc = project.start()
    db = project.db("exp_t")
    wait_for(lambda: db.exists() and finished(db) >= after, 60)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, seconds, ready))
    holder.start()
    ready.wait(30)
    return proc, db, holder


def test_a_5s_write_transaction_from_another_process_fails_nothing(project: Project) -> None:
    """Another connection holding a write transaction for 5 s only delays the search."""
    project.write_config(search_config(n_jobs=2, n_trials=40, sleep=0.05))
    proc, db, holder = _search_then_hold_write_lock(project, after=5, seconds=5.0)
    holder.join()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    assert states(db) == {"COMPLETE": 40}
    assert "Traceback" not in err


def test_lock_held_past_lock_timeout_names_db_and_holder(project: Project) -> None:
    """Past lock_timeout the search stops with one line naming the DB and what holds it."""
    project.write_config(search_config(n_jobs=2, n_trials=60, sleep=0.05) + "lock_timeout: 2\n")
    proc, db, holder = _search_then_hold_write_lock(project, after=3, seconds=12.0)
    _, err = proc.communicate(timeout=120)
    holder.join()
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert str(db.resolve()) in lines[0] and "locked" in lines[0]
    assert str(os.getpid()) in lines[0]  # this test process holds the lock
    assert "Traceback" not in err
    done = project.run(timeout=180)  # the lock is gone: the same command finishes the job
    assert done.returncode == 0, done.stderr[-3000:]
    assert finished(db) == 60 and "RUNNING" not in states(db)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_optuna_dashboard_polling_during_search_fails_nothing(project: Project, tmp_path: Path) -> None:
    """A real optuna-dashboard server polled all through the search never fails a trial.

    The trials wait (a hold file) until the dashboard has answered once, so that a slow dashboard
    start on a loaded machine cannot miss the whole search."""
    pytest.importorskip("optuna_dashboard")
    hold = tmp_path / "hold"
    hold.touch()
    project.write_config(search_config(n_jobs=2, n_trials=60, sleep=0.15) + f"hold: {hold}\n")
    db = project.db("exp_t")
    proc = project.start()
    wait_for(lambda: db.exists() and running_count(db) >= 1, 120)
    port = _free_port()
    dash = subprocess.Popen(
        [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())",
         f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(), cwd=project.root,
    )
    polls = 0
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
                for study in studies:
                    url = f"http://127.0.0.1:{port}/api/studies/{study['study_id']}"
                    with urllib.request.urlopen(url, timeout=5) as r:
                        json.loads(r.read())
                polls += 1
                hold.unlink(missing_ok=True)  # the dashboard answers: let the trials run
            except OSError:
                pass
            time.sleep(0.05)
    finally:
        hold.unlink(missing_ok=True)
        dash.terminate()
        dash.wait(10)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert polls >= 3
    assert states(db) == {"COMPLETE": 60}


@pytest.mark.slow
@pytest.mark.timeout(660)  # 64 workers on a loaded 2-core machine: the run's own bound says if it hung
def test_64_workers_1000_trials_exact(project: Project) -> None:
    """64 workers, 0.02 s trials, 1000 trials on one file: exactly 1000, none FAIL, no errors."""
    project.write_config(search_config(n_jobs=64, n_trials=1000, sleep=0.02))
    done = project.run(timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    db = project.db("exp_t")
    assert states(db) == {"COMPLETE": 1000}
    assert "database is locked" not in done.stderr and "Traceback" not in done.stderr
    assert integrity(db) == "ok"

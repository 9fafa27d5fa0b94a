"""The Dask backend with real processes: a LocalCluster, and an external scheduler + workers
started as subprocesses (``python -m distributed.cli.dask_scheduler`` / ``dask_worker``), a real
SQLite file and real Optuna; every test asserts on the database."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import Project, child_env, finished, integrity, search_config, states, trials, wait_for

#: Only this module's tests need Dask; the helpers below are shared with loky tests.
#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask extra not installed")]

#: A training script for the scale-out tests: sleeps, records what it saw, or kills its worker.
SCALE_SCRIPT = '''
import json, os, signal, sys, time
from hparam_joblib import current_trial_number, hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    start = time.time()
    sleep = config.get("sleep", 0.0)
    time.sleep(sleep if not isinstance(sleep, list) else sleep[0] + config["x"] * (sleep[1] - sleep[0]))
    mode = config.get("mode", "ok")
    if mode == "killworker" or (mode == "killworker_spaced" and _my_turn_to_kill(config["killlog"])):
        os.kill(os.getppid(), signal.SIGKILL)  # the trial's parent is its worker process
        time.sleep(60)
    if config.get("record"):
        line = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
                "trial": current_trial_number(), "worker": os.getppid()}
        with open(config["record"], "a") as fh:
            fh.write(json.dumps(line) + "\\n")
    return (config["x"] - 0.25) ** 2

def _my_turn_to_kill(path):
    """At most 3 kills in all, each only once more trials are COMPLETE in the database than at
    the previous kill (the log holds that count per kill)."""
    import fcntl, sqlite3
    from contextlib import closing
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        kills = [int(n) for n in fh.read().split()]
        with closing(sqlite3.connect("optuna_studies/exp_t.db", timeout=30)) as db:
            done = db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        if len(kills) < 3 and done > (kills[-1] if kills else 0):
            fh.write(f"{done}\\n")
            return True
    return False

if __name__ == "__main__":
    train()
'''


def config_yaml(*, n_jobs: int, n_trials: int, scheduler: str, sleep: object) -> str:
    """The test search on Dask (``scheduler``: ``local`` or an address), the scale-out script."""
    return search_config(n_jobs=n_jobs, n_trials=n_trials, backend="dask", dask_scheduler=scheduler,
                         heartbeat_interval=1, sleep=sleep, mode="ok", record='""')


@pytest.fixture
def scale(project: Project) -> Project:
    """The standard project, with the scale-out script as script.py."""
    project.script.write_text(SCALE_SCRIPT)
    return project


def owner_pids(db: Path, state: str | None = None) -> list[int]:
    """The worker pid of every trial (optionally only those in ``state``)."""
    query = (
        "SELECT a.value_json FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
        "WHERE a.key = 'hparam_joblib:owner'" + (" AND t.state = ?" if state else "")
    )
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(query, (state,) if state else ()).fetchall()
    return [json.loads(r[0])["pid"] for r in rows]


def max_overlap(rows: list[dict[str, float]]) -> int:
    """The largest number of recorded trials running at one instant."""
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class ExternalCluster:
    """``dask scheduler`` and ``dask worker --nworkers n --nthreads 1`` as subprocesses."""

    def __init__(self, root: Path, n_workers: int) -> None:
        self.dir = root / "cluster"
        self.n_workers = n_workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def start(self) -> None:
        self.dir.mkdir(exist_ok=True)
        info = self.dir / "scheduler.json"
        self._spawn("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard", "--scheduler-file", str(info))
        wait_for(lambda: info.exists() and json.loads(info.read_text()).get("address"), 60)
        self.address = json.loads(info.read_text())["address"]
        if not self.n_workers:
            return
        self._spawn("workers", "distributed.cli.dask_worker", self.address, "--nworkers", str(self.n_workers),
                    "--nthreads", "1", "--no-dashboard", "--memory-limit", "0")
        wait_for(lambda: len(self.worker_pids()) == self.n_workers, 60)

    def _spawn(self, name: str, module: str, *args: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=self.dir, env=child_env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))

    def worker_pids(self) -> dict[str, int]:
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            return dict(client.run(os.getpid))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@contextlib.contextmanager
def external_cluster(root: Path, n_workers: int) -> Iterator[ExternalCluster]:
    running = ExternalCluster(root, n_workers)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def cluster(scale: Project) -> Iterator[ExternalCluster]:
    with external_cluster(scale.root, n_workers=2) as running:
        yield running


def test_local_cluster_guide_like_search_exact_then_resume(scale: Project) -> None:
    """LocalCluster: exactly n_trials COMPLETE in exactly n_jobs worker processes; +6 resumes exactly."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=20, scheduler="local", sleep=0.2))
    started = time.monotonic()
    done = scale.run(timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    db = scale.db("exp_t")
    assert states(db) == {"COMPLETE": 20}  # no overshoot, nothing failed
    pids = set(owner_pids(db))
    assert len(pids) == 2, pids
    assert os.getpid() not in pids
    assert "Traceback" not in done.stderr
    print(f"dask local: 20 COMPLETE in {elapsed:.1f} s, worker pids {sorted(pids)}")
    more = scale.run("--set", "n_trials=26", timeout=120)
    assert more.returncode == 0, more.stderr[-3000:]
    assert states(db) == {"COMPLETE": 26}
    assert sorted(t["number"] for t in trials(db)) == list(range(26))
    assert integrity(db) == "ok"


def test_external_scheduler_and_workers(scale: Project, cluster: ExternalCluster) -> None:
    """A tcp:// scheduler with two external workers: exact total, trials ran in those workers,
    and the shared cluster's workers are still alive afterwards (we stop our loops, not them)."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=16, scheduler=cluster.address, sleep=0.1))
    done = scale.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    db = scale.db("exp_t")
    assert states(db) == {"COMPLETE": 16}
    workers = set(cluster.worker_pids().values())
    assert set(owner_pids(db)) <= workers and len(set(owner_pids(db))) == 2
    assert len(workers) == 2  # untouched by the search


def test_at_most_n_jobs_trials_at_once_on_a_bigger_cluster(scale: Project) -> None:
    """n_jobs=2 on a 4-worker external cluster: never more than 2 trials overlap."""
    record = scale.root / "record.jsonl"
    with external_cluster(scale.root, n_workers=4) as big:
        scale.write_config(config_yaml(n_jobs=2, n_trials=12, scheduler=big.address, sleep=0.2))
        done = scale.run("--set", f"record={record}", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(rows) == 12
    assert max_overlap(rows) == 2, rows
    assert states(scale.db("exp_t")) == {"COMPLETE": 12}


def test_kill9_launcher_on_external_cluster_then_resume(scale: Project, cluster: ExternalCluster) -> None:
    """kill -9 of the launcher: the loops on the (surviving) workers stop once the launcher's lease
    expires, no trial starts afterwards, nothing stays RUNNING, and a plain re-run ends exact."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=40, scheduler=cluster.address, sleep=0.3))
    db = scale.db("exp_t")
    proc = scale.start()
    wait_for(lambda: db.exists() and finished(db) >= 4, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    killed = time.monotonic()
    # heartbeat_interval 1 s: the lease expires after 3 s; the loops check it once a second.
    log = cluster.dir / "workers.log"
    wait_for(lambda: log.read_text().count("the search loop in worker") == 2, 20)
    stopped_after = time.monotonic() - killed
    assert "RUNNING" not in states(db)
    count = len(trials(db))
    time.sleep(3)
    assert len(trials(db)) == count, "a trial started after the launcher died"
    assert 0 < finished(db) < 40
    failed = [t for t in trials(db) if t["state"] == "FAIL"]
    assert all("launcher" in t["user_attrs"].get("failure_reason", "") for t in failed), [t["user_attrs"] for t in failed]
    assert len(cluster.worker_pids()) == 2  # the workers themselves survive
    print(f"launcher kill -9: loops stopped {stopped_after:.1f} s later, {len(failed)} trial(s) FAIL")
    done = scale.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert finished(db) == 40 and "RUNNING" not in states(db)
    assert integrity(db) == "ok"


def test_kill9_launcher_with_local_cluster_then_resume(scale: Project) -> None:
    """kill -9 of a LocalCluster launcher: its workers die with it, a re-run reaps and ends exact."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=30, scheduler="local", sleep=0.3))
    db = scale.db("exp_t")
    proc = scale.start()
    wait_for(lambda: db.exists() and finished(db) >= 4, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not _alive(owner_pids(db, "RUNNING")), 20)
    count = len(trials(db))
    time.sleep(2)
    assert len(trials(db)) == count
    done = scale.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert finished(db) == 30 and "RUNNING" not in states(db)


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            out.append(pid)
        except ProcessLookupError:
            pass
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_on_dask(scale: Project, signum: int) -> None:
    """SIGTERM to the launcher / SIGINT to its process group (Ctrl-C): exit 143 / 130 without a
    traceback from any process, this run's RUNNING trials FAIL, workers gone."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=100, scheduler="local", sleep=[0.1, 5.0]))
    db = scale.db("exp_t")
    proc = scale.start()
    wait_for(lambda: db.exists() and finished(db) >= 2 and len(owner_pids(db, "RUNNING")) == 2, 60)
    sent = time.monotonic()
    if signum == signal.SIGINT:  # Ctrl-C in a terminal: the whole process group, workers included
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert time.monotonic() - sent < 15
    assert "RUNNING" not in states(db)
    assert "Traceback" not in err
    failed = [t for t in trials(db) if t["state"] == "FAIL"]
    assert failed and all(signal.Signals(signum).name in t["user_attrs"]["failure_reason"]
                          or "launcher" in t["user_attrs"]["failure_reason"] for t in failed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_scheduler_is_one_line_exit_2_and_creates_nothing(scale: Project) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    scale.write_config(config_yaml(n_jobs=2, n_trials=10, scheduler=address, sleep=0))
    before = scale.snapshot()
    started = time.monotonic()
    done = scale.run(timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and address in lines[0] and "10 s" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 25
    assert scale.snapshot() == before  # no database, no directory
    print(f"unreachable scheduler: exit 2 after {elapsed:.1f} s: {lines[0]}")


def test_sigterm_on_external_cluster_stops_the_loops_not_the_workers(scale: Project, cluster: ExternalCluster) -> None:
    """SIGTERM with a shared cluster: exit 143 at once, the loops stop (the launcher's lease says so),
    this run's trials FAIL, nothing RUNNING, and the cluster's workers are still there."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=100, scheduler=cluster.address, sleep=[0.5, 5.0]))
    db = scale.db("exp_t")
    proc = scale.start()
    wait_for(lambda: db.exists() and finished(db) >= 1 and len(owner_pids(db, "RUNNING")) == 2, 60)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert time.monotonic() - sent < 15
    assert "RUNNING" not in states(db)
    count = len(trials(db))
    time.sleep(2.5)
    assert len(trials(db)) == count  # no loop goes on
    assert len(cluster.worker_pids()) == 2


def test_a_cluster_without_workers_ends_with_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler with no worker: the search stops with a BackendError after the bound (shortened
    here from 60 s), never hangs, and leaves no trial RUNNING. Runs in-process to shorten the bound."""
    from hparam_joblib import hparam_search
    from hparam_joblib._errors import BackendError
    from hparam_joblib.runtime.loops import _backend

    monkeypatch.setattr(_backend, "NO_WORKERS_TIMEOUT", 3.0)
    empty = ExternalCluster(tmp_path, n_workers=0)
    try:
        empty.start()
        config = tmp_path / "config.yaml"
        config.write_text(config_yaml(n_jobs=2, n_trials=4, scheduler=empty.address, sleep=0))

        @hparam_search(config_path=str(config), save_db_directory=str(tmp_path / "studies"))
        def train(cfg: dict) -> float:
            return 0.0

        started = time.monotonic()
        with pytest.raises(BackendError) as raised:
            train(argv=[])
        elapsed = time.monotonic() - started
    finally:
        empty.stop()
    message = str(raised.value)
    assert "\n" not in message and empty.address in message and "no worker" in message, message
    assert elapsed < 20
    assert "RUNNING" not in states(tmp_path / "studies" / "exp_t.db")


@pytest.mark.slow
@pytest.mark.timeout(360)  # the guide's 100 trials of 2 s: the run's own 300 s bound says if it hung
def test_guide_example_as_written_on_a_local_cluster(tmp_path: Path) -> None:
    """The guide's script and config verbatim (8 jobs, 100 trials of 2 s) with
    --set backend=dask: exactly 100 COMPLETE, in exactly 8 worker processes, no overshoot."""
    import shutil

    from tests.conftest import REPO

    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copy(REPO / "examples" / "your_script.py", tmp_path / "your_script.py")
    proj = Project(tmp_path)
    started = time.monotonic()
    done = proj.run("--set", "backend=dask", "dask_scheduler=local", script=tmp_path / "your_script.py", timeout=300)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    db = tmp_path / "optuna_studies" / "ImageNet_exp_first_sweep.db"
    assert states(db) == {"COMPLETE": 100}
    pids = set(owner_pids(db))
    assert len(pids) == 8, pids
    print(f"guide example on LocalCluster: {states(db)} in {elapsed:.1f} s, {len(pids)} worker pids")


def test_a_stalled_launcher_is_caught_up_not_cut_short(scale: Project, cluster: ExternalCluster) -> None:
    """SIGSTOP the launcher past its lease (3 s), then SIGCONT: the loops stopped meanwhile (as if
    it had died), and the launcher starts them again: exit 0 with exactly n_trials finished."""
    scale.write_config(config_yaml(n_jobs=2, n_trials=24, scheduler=cluster.address, sleep=0.5))
    db = scale.db("exp_t")
    proc = scale.start()
    wait_for(lambda: db.exists() and finished(db) >= 2, 60)
    os.kill(proc.pid, signal.SIGSTOP)
    log = cluster.dir / "workers.log"
    try:
        wait_for(lambda: log.read_text().count("the search loop in worker") == 2, 20)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped before the study was done; starting again" in err
    assert finished(db) == 24 and "RUNNING" not in states(db)

"""MLflow tracking: a real ``mlflow server`` (SQLite backend store in tmp) and a local ``sqlite:///``
tracking store; the search runs as a real script on 2 loky workers; assertions come from
``mlflow.search_runs`` and from the study's SQLite file."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow

SCRIPT = '''
import time
from hparam_joblib import hparam_search, report

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    x = config["x"]
    for step in range(5):
        time.sleep(config["sleep"])
        print(f"step {step} x={x:.4f}")
        report(x * (step + 1), step)
    return x

if __name__ == "__main__":
    train()
'''


def _config(tracking_uri: str, n_trials: int, sleep: float) -> str:
    return textwrap.dedent(f"""\
        experiment_name: track
        tag: t
        direction: minimize
        n_jobs: 2
        n_trials: {n_trials}
        seed: 1
        sleep: {sleep}
        pruner: {{type: median, n_startup_trials: 3, n_warmup_steps: 1}}
        tracking:
          mlflow: {{tracking_uri: "{tracking_uri}", experiment_name: hj-test}}
        sweep_parameters:
          x: {{type: float, low: 0.0, high: 1.0}}
          kind: {{type: categorical, choices: [a, b]}}
        """)


def _project(tmp_path: Path, tracking_uri: str, n_trials: int, sleep: float = 0.0) -> Path:
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "config.yaml").write_text(_config(tracking_uri, n_trials, sleep))
    return tmp_path


def _run(project: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "train.py", *args], check=False, cwd=project, capture_output=True,
                          text=True, timeout=timeout)


def _db_trials(project: Path) -> dict[int, dict[str, Any]]:
    db = project / "optuna_studies" / "track_t.db"
    with sqlite3.connect(db) as conn:
        trials = {n: {"state": s, "params": {}, "steps": 0} for n, s in
                  conn.execute("SELECT number, state FROM trials")}
        ids = dict(conn.execute("SELECT trial_id, number FROM trials"))
        for tid, name, value in conn.execute("SELECT trial_id, param_name, param_value FROM trial_params"):
            trials[ids[tid]]["params"][name] = value
        for tid, count in conn.execute("SELECT trial_id, COUNT(*) FROM trial_intermediate_values GROUP BY trial_id"):
            trials[ids[tid]]["steps"] = count
    return trials


def _runs(tracking_uri: str) -> list[Any]:
    mlflow.set_tracking_uri(tracking_uri)
    return list(mlflow.search_runs(experiment_names=["hj-test"], output_format="list", max_results=1000))


def _check_runs(tracking_uri: str, project: Path, n_trials: int, n_runs: int | None = None) -> tuple[Any, list[Any]]:
    """One parent, one nested run per finished trial with its params, value, steps and state."""
    runs = _runs(tracking_uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(nested)
    db = _db_trials(project)
    assert len(db) == n_trials and len(nested) == (n_trials if n_runs is None else n_runs), (len(nested), len(db))
    assert len({r.data.tags["optuna.trial_number"] for r in nested}) == len(nested)  # no duplicates
    assert parent.data.tags["optuna.study_name"] == "track_t"
    client = mlflow.tracking.MlflowClient(tracking_uri)
    for run in nested:
        number = int(run.data.tags["optuna.trial_number"])
        trial = db[number]
        assert run.data.tags["optuna.study_name"] == "track_t"
        assert run.data.tags["state"] == trial["state"], (number, run.data.tags)
        assert run.info.run_name == f"trial_{number:05d}"
        assert set(run.data.params) == {"x", "kind"}
        history = client.get_metric_history(run.info.run_id, "intermediate_value")
        assert [m.step for m in history] == list(range(trial["steps"])), number
        if trial["state"] == "COMPLETE":
            assert run.info.status == "FINISHED" and "value" in run.data.metrics
            assert abs(run.data.metrics["value"] - float(run.data.params["x"])) < 1e-9
        else:
            assert run.info.status == "KILLED" and run.data.tags["pruning_reason"].startswith("pruned by the pruner")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {f"trial_{number:05d}.log", "config.json"} <= artifacts, artifacts
    return parent, nested


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend store and artifacts in tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)

        wait_for(healthy, 180, poll=0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(30)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "mlflow-server"
    root.mkdir()
    srv = _Server(root)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_local_sqlite_store_parent_and_nested_runs_and_resume(tmp_path: Path) -> None:
    """sqlite:/// store: 12 trials -> 1 parent + 12 nested runs; --set n_trials=16 adds 4 nested
    runs to the same parent (its id is kept in the study)."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "p").mkdir()
    project = _project(tmp_path / "p", uri, 12)
    done = _run(project)
    assert done.returncode == 0, done.stderr[-3000:]
    parent, _ = _check_runs(uri, project, 12)
    assert parent.info.status == "FINISHED"
    again = _run(project, "--set", "n_trials=16")
    assert again.returncode == 0, again.stderr[-3000:]
    parent2, _ = _check_runs(uri, project, 16)
    assert parent2.info.run_id == parent.info.run_id
    with sqlite3.connect(project / "optuna_studies" / "track_t.db") as conn:
        (attr,) = conn.execute("SELECT value_json FROM study_system_attributes "
                               "WHERE key = 'hparam_joblib:mlflow_parent_run'").fetchone()
    assert json.loads(attr) == {f"{uri} hj-test": parent.info.run_id}


def test_tracking_server_20_trial_pruning_search(tmp_path: Path, server: _Server) -> None:
    """A real tracking server: 20 trials with a median pruner -> 20 nested runs, states as tags."""
    project = tmp_path / "p"
    project.mkdir()
    _project(project, server.url, 20)
    done = _run(project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not written" not in done.stderr, done.stderr[-3000:]  # a slow server loses no run
    _, nested = _check_runs(server.url, project, 20)
    states = {r.data.tags["state"] for r in nested}
    assert states == {"COMPLETE", "PRUNED"}, states


@pytest.mark.timeout(840)  # above its three waits (240 + 240 + 300 s) on a loaded machine
def test_server_stopped_mid_search_costs_no_trial(tmp_path: Path, server: _Server) -> None:
    """The server is killed after a few trials and started again later: every trial finishes
    (none FAIL), one warning per worker says runs are kept and retried, and once the server is back
    every trial's run is written (retried from the workers' memory)."""
    project = tmp_path / "p"
    project.mkdir()
    _project(project, server.url, 24, sleep=0.5)
    proc = subprocess.Popen([sys.executable, "train.py"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        db = project / "optuna_studies" / "track_t.db"

        def finished() -> int:
            with sqlite3.connect(db) as conn:
                return int(conn.execute(
                    "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0])

        wait_for(lambda: finished() >= 3, 240)
        server.stop()
        at_stop = finished()
        wait_for(lambda: finished() >= at_stop + 2, 240)  # trials go on while the server is down
        server.start()  # same port, same backend store
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    states = {t["state"] for t in _db_trials(project).values()}
    assert len(_db_trials(project)) == 24 and states <= {"COMPLETE", "PRUNED"}, states
    warnings = [line for line in err.splitlines() if "tracking.mlflow: cannot write trial" in line]
    assert 1 <= len(warnings) <= 2, err[-3000:]  # at most one per worker
    assert "runs are kept and retried every 5 s (the trials go on)" in warnings[0]
    # Every trial is in MLflow but those a worker counted as dropped (the server came back too
    # late for them): retried writes resumed after the restart, none twice.
    dropped = sum(int(m) for m in re.findall(r"(\d+) trial run\(s\) of this worker not written", err))
    _check_runs(server.url, project, 24, n_runs=24 - dropped)
    assert dropped < 24 - at_stop, (dropped, at_stop)  # some of those kept during the outage were written


class _SlowProxy:
    """A real HTTP hop in front of the server: every request waits ``delay`` s; the answer to the
    first create_run is lost after the server made the run (the connection is cut)."""

    def __init__(self, upstream: str, delay: float) -> None:
        import http.client
        import http.server
        import threading

        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                time.sleep(proxy.delay)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if "runs/create" in self.path and not proxy.cut:
                    proxy.cut = True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.delay = delay
        self.cut = False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_slow_server_loses_no_run_at_the_end_and_a_lost_answer_makes_no_duplicate(
        tmp_path: Path, server: _Server) -> None:
    """A worker ends with 14 runs queued behind a slow server (each request delayed 0.3 s: the whole
    queue takes far longer than the no-progress bound of 20 s): it waits while runs get written, so
    every one is. The first create_run's answer is lost after the server made the run: the retry
    finds that run by its tags, so the trial still has one run."""
    import optuna
    from mlflow.tracking import MlflowClient

    from hparam_joblib.runtime._tracking import TrackingTarget, TrialLogger

    client = MlflowClient(server.url)
    experiment = client.create_experiment("hj-slow")
    parent = client.create_run(experiment, run_name="slow_t").info.run_id
    proxy = _SlowProxy(server.url, delay=0.3)
    study = optuna.create_study(study_name="slow_t")
    frozen = []
    for i in range(14):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        log = tmp_path / f"trial_{i:05d}.log"
        log.write_text(f"trial {i}\n")
        trial.set_user_attr("log_file", str(log))
        trial.set_user_attr("config", {"x": trial.params["x"]})
        trial.report(0.5, 0)
        frozen.append(study.tell(trial, float(i)))
    writer = TrialLogger(TrackingTarget(proxy.url, experiment, parent, "slow_t"))
    try:
        started = time.monotonic()
        for t in frozen:
            writer.submit(t)
        writer.close(timeout=20.0)
        took = time.monotonic() - started
    finally:
        proxy.close()
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              max_results=100)
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)
    assert proxy.cut, "the proxy never cut a create_run answer"
    assert numbers == list(range(14)), numbers  # all written, none twice
    assert took > 20.0, took  # the queue outlasted the no-progress bound: the old fixed wait lost runs
    assert writer.written == 14 and all(r.info.status == "FINISHED" for r in runs)

"""A real optuna-dashboard server shows what a real search stored, over its HTTP API.

The database comes from a search run through the package (a script in a subprocess, 2 loky
workers) where some trials raise ``ValueError``. optuna-dashboard is started on a free loopback
port against that file; its JSON API (the one its web page reads) must list the study and every
trial with its state, params, value and, for the failed trials, the stored ``failure_reason``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCRIPT, child_env, searched_project, trials

pytest.importorskip("optuna_dashboard")
#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CONFIG = """
experiment_name: dash
tag: api
direction: minimize
n_jobs: 2
n_trials: 12
n_startup_trials: 12
seed: 11
sweep_parameters:
  x: {type: float, low: 0.0, high: 1.0}
  depth: {type: int, low: 1, high: 4}
  mode: {type: categorical, choices: [ok, raise]}
enqueue:
  - {mode: ok}
  - {mode: raise}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The database of a real 12-trial search in which the ``mode: raise`` trials fail."""
    with searched_project(tmp_path_factory.mktemp("dash"), SCRIPT, CONFIG, timeout=90) as proj:
        yield proj.db("dash_api")


@pytest.fixture
def dashboard(searched: Path, tmp_path: Path) -> Iterator[str]:
    """optuna-dashboard serving ``searched`` on 127.0.0.1:<free port>; yields its base URL."""
    port = _free_port()
    log = tmp_path / "dashboard.log"  # a file, not a pipe: its request log can never block it
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())",
             f"sqlite:///{searched}", "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=sink, env=child_env(),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                _get(f"{base}/api/meta")
                break
            except (OSError, urllib.error.URLError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail("optuna-dashboard did not answer on its port within 30 s")
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_dashboard_api_shows_study_trials_params_values_and_failure_reasons(
    searched: Path, dashboard: str
) -> None:
    """Every trial the search stored, as the dashboard serves it, matches the database."""
    stored = {t["number"]: t for t in trials(searched)}
    failed = [t for t in stored.values() if t["params"].get("mode") == "raise"]
    completed = [t for t in stored.values() if t["state"] == "COMPLETE"]
    assert len(stored) == 12 and failed and completed, stored

    (summary,) = _get(f"{dashboard}/api/studies")["study_summaries"]
    assert summary["study_name"] == "dash_api"
    assert summary["directions"] == ["minimize"]

    detail = _get(f"{dashboard}/api/studies/{summary['study_id']}?after=0")
    assert detail["name"] == "dash_api"
    served = {t["number"]: t for t in detail["trials"]}
    assert set(served) == set(stored)
    for number, want in stored.items():
        got = served[number]
        assert got["state"] == want["state"].capitalize(), (number, got["state"])
        params = {p["name"]: p["param_external_value"] for p in got["params"]}
        assert params == {k: str(v) for k, v in want["params"].items()}, number
        attrs = {a["key"]: a["value"] for a in got["user_attrs"]}
        if want["state"] == "COMPLETE":
            assert got["values"] == pytest.approx([want["value"]]), number
            assert "failure_reason" not in attrs
        else:
            assert "values" not in got or not got["values"], number
            assert attrs["failure_reason"] == want["user_attrs"]["failure_reason"], number

    for trial in failed:
        got = served[trial["number"]]
        assert got["state"] == "Pruned"
        attrs = {a["key"]: a["value"] for a in got["user_attrs"]}
        assert "ValueError" in attrs["failure_reason"] and "boom from trial" in attrs["failure_reason"]
        assert attrs["failure_type"] == "ValueError"

    best = min(completed, key=lambda t: t["value"])
    assert [t["number"] for t in detail["best_trials"]] == [best["number"]]

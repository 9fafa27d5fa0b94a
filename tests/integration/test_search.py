"""End-to-end searches: real scripts in subprocesses, real loky workers, a real SQLite file."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, Project, finished, integrity, search_config, states, trials, wait_for


@pytest.mark.slow
@pytest.mark.timeout(660)  # two runs of the guide's 2 s trials, 300 s each at most
def test_guide_example_as_written_then_ten_more(tmp_path: Path) -> None:
    """The guide's script and config verbatim: 100 finished trials in range, then exactly +10."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copy(REPO / "examples" / "your_script.py", tmp_path / "your_script.py")
    proj = Project(tmp_path)
    done = proj.run(script=tmp_path / "your_script.py", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    db = tmp_path / "optuna_studies" / "ImageNet_exp_first_sweep.db"
    assert states(db) == {"COMPLETE": 100}
    rows = trials(db)
    for row in rows:
        p = row["params"]
        assert 5.0e-5 <= p["learning_rate"] <= 1.0e-2
        assert p["num_epochs"] % 10 == 0 and 10 <= p["num_epochs"] <= 100
        assert p["optimizer"] in ("Adam", "RMSprop", "SGD")
        assert row["user_attrs"]["config"]["hidden_layers"] == 8
    assert "optuna-dashboard sqlite:///optuna_studies/ImageNet_exp_first_sweep.db" in done.stdout
    more = proj.run("--set", "n_trials=110", script=tmp_path / "your_script.py", timeout=300)
    assert more.returncode == 0, more.stderr[-2000:]
    assert states(db) == {"COMPLETE": 110}
    before = {r["number"]: r["value"] for r in rows}
    after = {r["number"]: r["value"] for r in trials(db)}
    assert all(after[n] == v for n, v in before.items())


@pytest.mark.slow
def test_failures_are_pruned_with_reason_and_search_continues(project: Project) -> None:
    """Exceptions, bad returns and dead trial processes become PRUNED with a stored reason."""
    # Eight modes of nine fail: the first trials may all fail by chance, so no stop-fast rule.
    project.write_config(search_config(n_jobs=2, n_trials=27) + """
  mode:
    type: categorical
    choices: [ok, raise, none, nan, inf, string, exit, segv, sigkill]
max_trial_errors: 0
""")
    done = project.run()
    assert done.returncode == 0, done.stderr[-2000:]
    db = project.db("exp_t")
    rows = trials(db)
    assert len(rows) == 27 and finished(db) == 27
    expected = {
        "raise": "ValueError: boom from trial",
        "none": "returned None",
        "nan": "returned nan",
        "inf": "returned inf",
        "string": "returned '0.5'",
        "exit": "exited with status 3",
        "segv": "killed by SIGSEGV",
        "sigkill": "killed by SIGKILL",
    }
    seen_modes = set()
    for row in rows:
        mode = row["params"]["mode"]
        seen_modes.add(mode)
        if mode == "ok":
            assert row["state"] == "COMPLETE"
            continue
        assert row["state"] == "PRUNED", row
        assert expected[mode] in row["user_attrs"]["failure_reason"]
    raised = [r for r in rows if r["params"]["mode"] == "raise"]
    for row in raised:
        assert row["user_attrs"]["failure_type"] == "ValueError"
        assert "Traceback" in row["user_attrs"]["failure_traceback"]
    assert len(seen_modes) >= 5  # the random sampler visited several failure kinds
    assert "Trial" in done.stderr and "pruned" in done.stderr


@pytest.mark.slow
def test_n_jobs_2_runs_in_two_worker_processes_at_once(project: Project) -> None:
    """Two distinct worker pids own trials, neither of them the launcher's, and trials of
    different workers overlap in time."""
    project.write_config(search_config(n_jobs=2, n_trials=12) + "sleep: 0.3\n")
    launcher = project.start()  # started, not run: its pid is the launcher's
    _, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, err[-2000:]
    rows = trials(project.db("exp_t"))
    assert len(rows) == 12
    owners = {r["system_attrs"]["hparam_joblib:owner"]["pid"] for r in rows}
    assert len(owners) == 2
    assert launcher.pid not in owners, (launcher.pid, owners)  # no trial ran in the launcher process
    overlaps = 0
    for a in rows:
        for b in rows:
            pa = a["system_attrs"]["hparam_joblib:owner"]["pid"]
            pb = b["system_attrs"]["hparam_joblib:owner"]["pid"]
            if pa < pb and a["start"] < b["complete"] and b["start"] < a["complete"]:
                overlaps += 1
    assert overlaps >= 3


def test_n_jobs_1_still_isolates_the_launcher(project: Project) -> None:
    """With n_jobs=1 a segfaulting trial does not kill the launcher; the budget completes.
    (Two segfaults queued first; max_trial_errors off, so random choices cannot stop the run.)"""
    project.write_config(search_config(n_jobs=1, n_trials=6) + """\
  mode: {type: categorical, choices: [ok, segv]}
max_trial_errors: 0
enqueue:
  - {x: 0.5, mode: segv}
  - {x: 0.5, mode: segv}
""")
    done = project.run()
    assert done.returncode == 0, done.stderr[-2000:]
    db = project.db("exp_t")
    assert finished(db) == 6
    assert "RUNNING" not in states(db)
    segv = [r for r in trials(db) if "SIGSEGV" in str(r["user_attrs"].get("failure_reason", ""))]
    assert len(segv) >= 2 and all(r["state"] == "PRUNED" for r in segv)


@pytest.mark.slow
def test_resume_runs_exactly_the_missing_trials(project: Project) -> None:
    """--set n_trials raises the study's total; re-running a finished study runs nothing."""
    project.write_config(search_config(n_jobs=2, n_trials=10))
    assert project.run().returncode == 0
    db = project.db("exp_t")
    assert states(db) == {"COMPLETE": 10}
    more = project.run("--set", "n_trials=15")
    assert more.returncode == 0
    assert states(db) == {"COMPLETE": 15}
    again = project.run("--set", "n_trials=15")
    assert again.returncode == 0
    assert states(db) == {"COMPLETE": 15}
    assert "nothing to run" in again.stderr
    assert "best value:" in again.stdout
    # Two trials left and n_jobs=8: only two workers are started for them.
    two_more = project.run("--set", "n_trials=17", "n_jobs=8")
    assert two_more.returncode == 0
    assert states(db) == {"COMPLETE": 17}
    newest = [t for t in trials(db) if t["number"] >= 15]
    assert len({t["system_attrs"]["hparam_joblib:owner"]["pid"] for t in newest}) <= 2


def test_overrides_reach_the_function_and_name_the_db(project: Project) -> None:
    """`--set n_jobs=2 tag=second_sweep` names the DB; a new nested key reaches the function."""
    project.write_config(search_config(n_jobs=1, n_trials=3))
    done = project.run("--set", "n_jobs=2", "tag=second_sweep", "--set", "model.first_layer.bias=False")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not project.db("exp_t").exists()
    db = project.db("exp_second_sweep")
    assert states(db) == {"COMPLETE": 3}
    for row in trials(db):
        assert row["user_attrs"]["config"]["model"]["first_layer"]["bias"] is False
    assert "model.first_layer.bias" in done.stderr and "added" in done.stderr
    study = optuna.load_study(study_name="exp_second_sweep", storage=f"sqlite:///{db}")
    assert study.user_attrs["config"]["tag"] == "second_sweep"
    assert study.user_attrs["config"]["n_jobs"] == 2


def test_function_receives_fixed_and_nested_sampled_values(project: Project) -> None:
    """Fixed values keep their nesting; a dotted sweep name lands nested; study keys stay out."""
    record = project.root / "configs.jsonl"
    project.write_config(f"""
experiment_name: exp
tag: t
n_jobs: 2
n_trials: 4
record: {record}
model: {{depth: 3, head: {{dropout: 0.1}}}}
sweep_parameters:
  model.head.lr: {{type: float, low: 1e-4, high: 1e-2, log: true}}
""")
    assert project.run().returncode == 0
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(seen) == 4
    for cfg in seen:
        assert cfg["model"]["depth"] == 3 and cfg["model"]["head"]["dropout"] == 0.1
        assert 1e-4 <= cfg["model"]["head"]["lr"] <= 1e-2
        assert cfg["experiment_name"] == "exp" and cfg["tag"] == "t"
        assert "sweep_parameters" not in cfg and "n_trials" not in cfg


@pytest.mark.slow
def test_ctrl_c_stops_fast_leaves_nothing_running_and_resumes(project: Project) -> None:
    """SIGINT to the process group: exit 130 within seconds, no RUNNING trial, summary printed."""
    project.write_config(search_config(n_jobs=2, n_trials=30) + "sleep: 0.5\n")
    proc = project.start()
    db = project.db("exp_t")
    wait_for(lambda: db.exists() and finished(db) >= 2, 60)
    import os

    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 5
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in out and "best value" in out
    counts = states(db)
    assert "RUNNING" not in counts
    assert finished(db) < 30
    resumed = project.run()
    assert resumed.returncode == 0
    assert finished(db) == 30 and "RUNNING" not in states(db)
    assert integrity(db) == "ok"


def test_kill_int_during_set_up_stops_a_background_launch(project: Project) -> None:
    """A script started in the background of a shell inherits SIGINT ignored; kill -INT while the
    launch is still setting up (here: waiting for a write lock another process holds) stops it:
    exit 130 with one line, nothing changed in the study. The same command then runs."""
    import os
    import sqlite3
    import subprocess
    import sys

    from tests.conftest import child_env

    project.write_config(search_config(n_jobs=2, n_trials=2) + "lock_timeout: 300\n")
    assert project.run().returncode == 0
    db = project.db("exp_t")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # every write of the launch waits (and retries) for it
    try:
        # Like `python x.py &` in a shell script: SIGINT ignored (sh's trap, kept across exec).
        background = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
        proc = subprocess.Popen(
            [*background, sys.executable, str(project.script), "--set", "n_trials=4"], cwd=project.root,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
        )

        def has_db_open() -> bool:
            fds = Path(f"/proc/{proc.pid}/fd")
            return any(os.path.realpath(fd) == str(db.resolve()) for fd in fds.iterdir())

        wait_for(has_db_open, 120)  # past the imports: the launch is setting up the study
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted (SIGINT) before the search started" in err and "Traceback" not in err, err[-2000:]
    assert states(db) == {"COMPLETE": 2}
    again = project.run("--set", "n_trials=4")
    assert again.returncode == 0, again.stderr[-2000:]
    assert states(db) == {"COMPLETE": 4}


def test_sigterm_exits_143(project: Project) -> None:
    """SIGTERM to the launcher alone stops the workers and exits 143 with no RUNNING trial."""
    project.write_config(search_config(n_jobs=2, n_trials=30) + "sleep: 0.5\n")
    proc = project.start()
    db = project.db("exp_t")
    wait_for(lambda: db.exists() and finished(db) >= 2, 60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err[-2000:]
    assert "RUNNING" not in states(db)


@pytest.mark.slow
@pytest.mark.timeout(660)  # 32 workers on a loaded 2-core machine: the run's own bound says if it hung
def test_32_workers_500_trials_exact_no_errors(project: Project) -> None:
    """32 workers sharing one SQLite file finish exactly 500 trials; no storage error surfaces."""
    project.write_config(search_config(n_jobs=32, n_trials=500) + "sleep: 0.05\n")
    done = project.run(timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    db = project.db("exp_t")
    assert states(db) == {"COMPLETE": 500}
    numbers = sorted(r["number"] for r in trials(db))
    assert numbers == list(range(500))
    assert "lock retries:" in done.stdout
    assert "Traceback" not in done.stderr and "database is locked" not in done.stderr
    assert integrity(db) == "ok"


def test_dry_run_touches_nothing(project: Project) -> None:
    """--dry-run prints the resolved config and space and creates no database."""
    project.write_config(search_config(n_jobs=2, n_trials=5))
    before = project.snapshot()
    done = project.run("--dry-run", "--set", "n_trials=7")
    assert done.returncode == 0
    assert "n_trials: 7" in done.stdout and "x: float [0.0, 1.0]" in done.stdout
    assert project.snapshot() == before
    assert not (project.root / "optuna_studies").exists()

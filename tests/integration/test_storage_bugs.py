"""The six storage bugs of issue 13, each on a real SQLite file, a real PostgreSQL server, a real
journal file or a real search process: every test failed before its fix."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hparam_joblib.storage import RetryPolicy, StorageLocation, open_storage, prepare
from hparam_joblib.storage._owners import reap_stale
from tests.conftest import Project, child_env, search_config, states, trials, wait_for

optuna.logging.set_verbosity(optuna.logging.WARNING)


def config_yaml(*, n_trials: int) -> str:
    """The test search: two workers, the default number of start-up trials."""
    return search_config(n_trials=n_trials, n_startup_trials=None)


def _launcher_then_worker(location: StorageLocation, **kwargs: Any) -> Any:
    """Open a storage the way a search does: the launcher creates the schema, a worker opens it."""
    prepare(location, RetryPolicy())
    launcher = open_storage(location, create_tables=True, **kwargs)
    launcher.add_budget_index()
    return open_storage(location, run_id="test", **kwargs)


def _location(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StorageLocation:
    if kind == "postgresql":
        return StorageLocation("postgresql", url=request.getfixturevalue("pg_url"))
    if kind == "journal":
        return StorageLocation("journal", path=str(tmp_path / "study.journal"))
    return StorageLocation.sqlite(tmp_path / "study.db")


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


# -- 1. stale reads: the data_version skip ignored the caller and the arguments ---------------------
def test_two_studies_on_one_storage_both_see_every_trial(tmp_path: Path) -> None:
    storage = _launcher_then_worker(StorageLocation.sqlite(tmp_path / "study.db"))
    optuna.create_study(storage=storage, study_name="s")
    a = optuna.load_study(study_name="s", storage=storage)
    b = optuna.load_study(study_name="s", storage=storage)
    a.optimize(_objective, n_trials=1)
    assert len(b.trials) == 1
    a.optimize(_objective, n_trials=1)
    assert [len(a.trials), len(b.trials)] == [2, 2]
    assert [t.state for t in b.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]


def test_get_trials_with_a_large_included_list_finds_the_trial(tmp_path: Path) -> None:
    """Optuna's test_get_trials_included_trial_ids on our storage (it failed: 0 == 1)."""
    storage = _launcher_then_worker(StorageLocation.sqlite(tmp_path / "study.db"))
    study_id = storage.create_new_study(directions=[optuna.study.StudyDirection.MINIMIZE])
    trial_id = storage.create_new_trial(study_id)
    above = trial_id + 500000
    assert storage._get_trials(study_id, None, set(), above) == []
    found = storage._get_trials(study_id, None, set(range(500000)), above)
    assert [t._trial_id for t in found] == [trial_id]


# -- 2. buffered writes were invisible to some reads ------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_buffered_params_and_attrs_are_read_back(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    storage = _launcher_then_worker(_location(kind, tmp_path, request))
    study_id = storage.create_new_study(directions=[optuna.study.StudyDirection.MINIMIZE])
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_param(trial_id, "x", 0.5, FloatDistribution(0.0, 1.0))
    storage.set_trial_user_attr(trial_id, "u", [1, 2])
    storage.set_trial_system_attr(trial_id, "s", {"k": 1.5})
    assert storage.get_trial_param(trial_id, "x") == 0.5
    assert storage.get_trial_params(trial_id) == {"x": 0.5}
    assert storage.get_trial_user_attrs(trial_id) == {"u": [1, 2]}
    assert storage.get_trial_system_attrs(trial_id)["s"] == {"k": 1.5}
    # ... and they reach the database with the final state.
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.25])
    plain = optuna.load_study(study_name=storage.get_study_name_from_id(study_id),
                              storage=_plain(storage.location))
    (done,) = plain.trials
    assert (done.params, done.user_attrs, done.system_attrs["s"]) == ({"x": 0.5}, {"u": [1, 2]}, {"k": 1.5})


def test_journal_study_trials_show_a_running_trials_user_attrs(tmp_path: Path) -> None:
    storage = _launcher_then_worker(StorageLocation("journal", path=str(tmp_path / "study.journal")))
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    trial.set_user_attr("config", {"x": 1})
    storage.set_trial_user_attr(trial._trial_id, "failure_reason", "r")  # not through the Trial
    assert study.trials[0].user_attrs == {"config": {"x": 1}, "failure_reason": "r"}
    assert storage.get_trial(trial._trial_id).user_attrs == {"config": {"x": 1}, "failure_reason": "r"}
    assert storage.get_trial_user_attrs(trial._trial_id) == {"config": {"x": 1}, "failure_reason": "r"}


def _plain(location: StorageLocation) -> Any:
    if location.kind == "postgresql":
        return optuna.storages.RDBStorage(location.public_url)
    return location.public_url


# -- 3. reap_stale crashed with grace_period=None (Optuna's default: 2 x the interval) ---------------
def test_reap_stale_with_optunas_default_grace_period(pg_url: str) -> None:
    storage = _launcher_then_worker(StorageLocation("postgresql", url=pg_url), heartbeat_interval=1)
    storage.grace_period = None  # what RDBStorage(heartbeat_interval=1) leaves: 2 x interval
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    deadline = time.monotonic() + 60
    reaped: list[int] = []
    while not reaped and time.monotonic() < deadline:  # stale once 2 s pass without a beat
        time.sleep(0.5)
        reaped = reap_stale(storage, study._study_id)
    assert reaped == [trial.number]
    failed = storage.get_trial(trial._trial_id)
    assert failed.state == TrialState.FAIL
    assert "no heartbeat for over 2 s" in failed.user_attrs["failure_reason"]


# -- 4. Optuna's stale-trial callbacks never ran ----------------------------------------------------
@pytest.mark.parametrize("cached", [False, True], ids=["raw", "cached"])
def test_retry_stale_trial_callback_runs(pg_url: str, cached: bool) -> None:
    storage = _launcher_then_worker(StorageLocation("postgresql", url=pg_url), heartbeat_interval=1)
    storage.grace_period = 2
    storage.heartbeat_stale_trial_callback = RetryHeartbeatStaleTrialCallback(max_retry=1)
    study = optuna.create_study(storage=storage, study_name="s")
    if cached:
        study = optuna.load_study(study_name="s", storage=storage)
    stale = study.ask()
    stale.suggest_float("x", 0.0, 1.0)
    storage.flush_trial(stale._trial_id)
    time.sleep(4)  # > grace period since its first (and only) heartbeat
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)
    first, retry = study.trials
    assert first.state == TrialState.FAIL
    assert "no heartbeat" in first.user_attrs["failure_reason"]
    assert retry.state == TrialState.COMPLETE
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == first.number
    assert retry.params == first.params


# -- 5. a RUNNING trial without an owner record hung the search ------------------------------------
ASK_AND_EXIT = """
import optuna, sys
study = optuna.load_study(study_name=sys.argv[2], storage="sqlite:///" + sys.argv[1])
trial = study.ask()
trial.suggest_float("x", 0.0, 1.0)
"""


@pytest.mark.slow
def test_a_trial_left_running_by_plain_optuna_does_not_hang_the_search(project: Project) -> None:
    project.write_config(config_yaml(n_trials=4))
    first = project.run()
    assert first.returncode == 0, first.stderr[-3000:]
    db = project.db("exp_t")
    asker = project.root / "ask.py"
    asker.write_text(ASK_AND_EXIT)
    subprocess.run([sys.executable, str(asker), str(db), "exp_t"], check=True, env=child_env(), timeout=120)
    assert states(db) == {"COMPLETE": 4, "RUNNING": 1}
    second = project.run("--set", "n_trials=6", timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert states(db) == {"COMPLETE": 6, "FAIL": 1}
    (orphan,) = [t for t in trials(db) if t["state"] == "FAIL"]
    assert orphan["number"] == 4
    assert "no owner record" in orphan["user_attrs"]["failure_reason"]
    assert "trial 4" in second.stderr and "no owner record" in second.stderr


@pytest.mark.slow
def test_an_ownerless_trial_of_a_live_process_is_named_then_reaped_when_it_exits(project: Project) -> None:
    """While the process that asked for the trial has the database open it may still tell: the
    search names it and waits; once that process exits, the trial is failed and the search ends."""
    project.write_config(config_yaml(n_trials=2))
    assert project.run().returncode == 0
    db = project.db("exp_t")
    holder = project.root / "hold.py"
    holder.write_text(ASK_AND_EXIT + "print('asked', flush=True)\nimport time\ntime.sleep(3600)\n")
    asker = subprocess.Popen([sys.executable, str(holder), str(db), "exp_t"], stdout=subprocess.PIPE,
                             text=True, env=child_env())
    log = project.root / "search.err"
    try:
        assert asker.stdout is not None and asker.stdout.readline().strip() == "asked"
        with open(log, "w") as err:
            search = subprocess.Popen([sys.executable, str(project.script), "--set", "n_trials=4"],
                                      cwd=project.root, stderr=err, stdout=subprocess.DEVNULL, env=child_env())
        wait_for(lambda: "trial 2 is RUNNING with no owner record" in log.read_text(), 240)
        assert f"{asker.pid} (python" in log.read_text()
        wait_for(lambda: states(db).get("COMPLETE") == 3, 240)  # the other slots are used meanwhile
        assert search.poll() is None and states(db).get("RUNNING") == 1  # waits for trial 2
    finally:
        asker.kill()
        asker.wait()
    assert search.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert states(db) == {"COMPLETE": 4, "FAIL": 1}
    (orphan,) = [t for t in trials(db) if t["state"] == "FAIL"]
    assert orphan["number"] == 2 and "no owner record" in orphan["user_attrs"]["failure_reason"]


# -- 6. a launch's pre-flight read a file another launch had created but not yet given a schema -----
@pytest.mark.slow
def test_a_database_without_the_whole_schema_yet_is_a_new_study(project: Project) -> None:
    """What a second launch sees while the first creates the file: some of Optuna's tables."""
    db = project.db("exp_t")
    db.parent.mkdir()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name VARCHAR(512) UNIQUE)")
        conn.commit()
    project.write_config(config_yaml(n_trials=3))
    run = project.run()
    assert run.returncode == 0, run.stderr[-3000:]
    assert states(db) == {"COMPLETE": 3}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_ctrl_c_just_after_the_write_lock_is_taken_does_not_keep_it(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt raised the moment flock() returns (Ctrl-C, a notebook's stop button)
    leaves the file's write lock free: before, the launcher (a notebook kernel) kept it, and the
    next search in that kernel waited on it forever."""
    import fcntl

    from hparam_joblib.storage import _journal

    if kind == "sqlite":
        location = StorageLocation.sqlite(tmp_path / "study.db")
        lock_file = str(tmp_path / "study.db") + ".lock"
    else:
        location = StorageLocation("journal", path=str(tmp_path / "study.journal"))
        lock_file = str(tmp_path / "study.journal") + _journal.LOCK_SUFFIX
    prepare(location, RetryPolicy())
    storage: Any = open_storage(location, create_tables=True)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    real_flock = fcntl.flock

    def interrupted(fd: int, op: int) -> None:
        real_flock(fd, op)
        if op & fcntl.LOCK_EX:
            raise KeyboardInterrupt  # delivered right after the lock was taken

    monkeypatch.setattr(fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.set_study_user_attr(study_id, "k", 1)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    probe = subprocess.run(  # another process takes the lock at once
        [sys.executable, "-c", ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')"), lock_file],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert probe.stdout.strip() == "free", probe.stderr
    storage.set_study_user_attr(study_id, "k", 2)  # and this process writes again
    assert storage.get_study_user_attrs(study_id) == {"k": 2}


# -- the run history of launches that start at once ------------------------------------------------

APPEND_RUNS = """
import json, sys
from hparam_joblib.runtime._history import append_run
from hparam_joblib.storage import StorageLocation, open_storage
spec, name, writer = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
storage = open_storage(StorageLocation(spec["kind"], path=spec["path"], url=spec["url"]))
study_id = storage.get_study_id_from_name(name)
for i in range(15):
    append_run(storage, study_id, {"run": f"{writer}-{i}", "config": {"writer": writer}})
storage.close()
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_launches_appending_to_the_run_history_at_once_keep_every_entry(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every launch appends its run to the study's history (a user attr). Read, append and write
    were three steps, so a launch that started at the same moment as another could overwrite
    its entry: four processes appending 15 entries each now leave all 60."""
    import json

    location = _location(kind, tmp_path, request)
    storage = _launcher_then_worker(location)
    name = f"runs_{tmp_path.name}"[-60:]
    optuna.create_study(storage=storage, study_name=name)
    spec = json.dumps({"kind": location.kind, "path": location.path, "url": location.url})
    writers = [
        subprocess.Popen([sys.executable, "-c", APPEND_RUNS, spec, name, f"w{n}"], env=child_env(),
                         stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    for proc in writers:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
    runs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))["runs"]
    assert sorted(r["run"] for r in runs) == sorted(f"w{n}-{i}" for n in range(4) for i in range(15))
    storage.close()

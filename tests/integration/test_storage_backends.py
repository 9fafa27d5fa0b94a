"""The same search facts on every storage: a real PostgreSQL server (the ``pg_url`` fixture) and
Optuna's journal file, with real processes, real Optuna and no mocks.

Each test asserts on the storage itself: exact counts by state, owners, failure reasons, and
that plain Optuna reads what the search wrote.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, child_env, search_config, wait_for

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def config_yaml(*, n_jobs: int, n_trials: int, sleep: object, storage: str) -> str:
    """The test search on ``storage``, with heartbeats every second (on a server)."""
    return search_config(n_jobs=n_jobs, n_trials=n_trials, sleep=sleep, storage=storage, heartbeat_interval=1)


SECRET = "s3cr3t-pw-Zq9"
OWNER = "hparam_joblib:owner"


# -- helpers ------------------------------------------------------------------------------------


def with_password(url: str) -> str:
    """``postgresql://postgres@host/db`` -> with a password (the test server trusts any)."""
    return url.replace("://postgres@", f"://postgres:{SECRET}@", 1)


def pg_query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def pg_states(url: str) -> dict[str, int]:
    return {s: int(n) for s, n in pg_query(url, "SELECT state, COUNT(*) FROM trials GROUP BY state")}


def pg_tables(url: str) -> set[str]:
    return {r[0] for r in pg_query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def psycopg2_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def load(storage: Any, name: str = "exp_t") -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


def journal_storage(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def counts(study: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished(c: dict[str, int]) -> int:
    return c.get("COMPLETE", 0) + c.get("PRUNED", 0)


def running_owner_pids(study: Any) -> list[int]:
    return [
        t.system_attrs[OWNER]["pid"] for t in study.get_trials(deepcopy=False)
        if t.state.name == "RUNNING" and OWNER in t.system_attrs
    ]


def project_pids(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                mine = os.readlink(entry / "cwd").startswith(str(root))
                if mine and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def results_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from hparam_joblib.results._cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=120,
        env=env or child_env(),
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- storages as parameters -----------------------------------------------------------------------


class Store:
    """One storage under test (and the backend that runs it): the config, how to read it back."""

    def __init__(self, kind: str, setting: str, reader: Any, extra: str = "") -> None:
        self.kind = kind
        self.setting = setting
        self.reader = reader
        self.extra = extra

    def config(self, **values: Any) -> str:
        """The test config for this storage (and backend) with ``values`` filled in."""
        return config_yaml(storage=self.setting, **values) + self.extra

    def study(self) -> Any:
        return load(self.reader())


#: The issue asks for the same DB facts on LocalCluster + PostgreSQL as on loky + SQLite.
DASK_LOCAL = "backend: dask\ndask_scheduler: local\n"


@pytest.fixture(params=["postgresql", "journal", "dask+postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param.endswith("postgresql"):
        url = request.getfixturevalue("pg_url")
        extra = DASK_LOCAL if request.param.startswith("dask") else ""
        if extra:
            pytest.importorskip("distributed")
        return Store("postgresql", with_password(url), lambda: psycopg2_url(url), extra)
    path = tmp_path / "studies" / "exp.journal"
    return Store("journal", f"journal:{path}", lambda: journal_storage(path))


# -- the guide's search, resume, secrets ------------------------------------------------------------


def test_search_n_jobs_4_exact_resume_and_no_password(project: Project, store: Store) -> None:
    """n_jobs=4: exactly n_trials COMPLETE in 4 distinct worker processes; plain Optuna reads
    them; a resume with more trials is exact; the password is never printed nor stored."""
    # Trials long enough that a loop starting late on a loaded machine still gets some.
    project.write_config(store.config(n_jobs=4, n_trials=40, sleep=0.5))
    done = project.run(timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    study = store.study()
    assert counts(study) == {"COMPLETE": 40}
    assert sorted(t.number for t in study.trials) == list(range(40))
    pids = {t.system_attrs[OWNER]["pid"] for t in study.trials}
    assert len(pids) == 4, pids
    assert "done: 40/40 finished" in done.stderr + done.stdout
    resumed = project.run("--set", "n_trials=50", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert counts(store.study()) == {"COMPLETE": 50}
    for out in (done, resumed):
        assert SECRET not in out.stdout + out.stderr
    assert SECRET not in json.dumps(store.study().user_attrs)
    if store.kind == "postgresql":
        assert "***@" in done.stderr + done.stdout  # the summary names the server, redacted
        assert pg_states(store.reader().replace("+psycopg2", "")) == {"COMPLETE": 50}


def test_worker_sigkilled_mid_trial_is_failed_and_rerun(project: Project, store: Store) -> None:
    """SIGKILL of a worker mid-trial: its trial is FAIL with the reason, re-run, total exact."""
    project.write_config(store.config(n_jobs=2, n_trials=12, sleep=0.5))
    proc = project.start()
    wait_for(lambda: finished(counts(store.study())) >= 2 and running_owner_pids(store.study()), 90)
    victim = running_owner_pids(store.study())[0]
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    study = store.study()
    c = counts(study)
    assert finished(c) == 12 and "RUNNING" not in c, c
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert any(str(victim) in t.user_attrs.get("failure_reason", "") for t in failed), failed
    assert SECRET not in err


def test_kill9_launcher_then_resume(project: Project, store: Store) -> None:
    """kill -9 of the launcher: orphaned workers stop and fail their trials; the same command
    then finishes exactly n_trials with nothing RUNNING and every earlier COMPLETE unchanged."""
    project.write_config(store.config(n_jobs=3, n_trials=30, sleep=[0.2, 0.4]))
    proc = project.start()
    wait_for(lambda: finished(counts(store.study())) >= 4, 90)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not project_pids(project.root), 20)
    before = {t.number: t.value for t in store.study().trials if t.state.name == "COMPLETE"}
    assert 0 < len(before) < 30
    done = project.run(timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    study = store.study()
    c = counts(study)
    assert finished(c) == 30 and "RUNNING" not in c, c
    after = {t.number: t.value for t in study.trials}
    assert all(after[n] == v for n, v in before.items())


# -- exact budget under a race -----------------------------------------------------------------------


def _race(location: Any, budget: int, barrier: Any, out: Any) -> None:
    from optuna.trial import TrialState

    from hparam_joblib.storage import BudgetExhausted, open_storage

    storage: Any = open_storage(location, budget=budget, run_id=f"race{os.getpid()}")
    study_id = storage.get_study_id_from_name("race")
    barrier.wait()
    made = 0
    while True:
        try:
            trial_id = storage.create_new_trial(study_id)
        except BudgetExhausted:
            break
        made += 1
        time.sleep(0.05)  # the trial runs (holding its slot), so one process cannot take them all
        if made % 3 == 0:  # a FAIL frees its slot: the race goes on for it
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        else:
            storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.0])
    out.put(made)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "journal"])
def test_budget_race_many_processes(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """12 processes race to create trials against a budget of 30: exactly 30 hold a slot, and
    every trial made is finished (COMPLETE, or FAIL, which frees its slot): none extra."""
    import optuna

    from hparam_joblib.storage import RetryPolicy, StorageLocation, open_storage, prepare

    if kind == "postgresql":
        location = StorageLocation("postgresql", url=request.getfixturevalue("pg_url"))
    elif kind == "journal":
        location = StorageLocation("journal", path=str(tmp_path / "race.journal"))
    else:
        location = StorageLocation.sqlite(tmp_path / "race.db")
    prepare(location, RetryPolicy())  # as the launcher does: WAL on SQLite, nothing on a server
    setup: Any = open_storage(location, create_tables=True)
    setup.add_budget_index()
    optuna.create_study(storage=setup, study_name="race")
    setup.close()  # the racers fork from here: no connection of this process goes with them
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(12), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(location, 30, barrier, out)) for _ in range(12)]
    for p in procs:
        p.start()
    made = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    reader: Any = open_storage(location)
    c = reader.count_states(reader.get_study_id_from_name("race"))
    reader.close()
    assert c.get("COMPLETE", 0) + c.get("PRUNED", 0) + c.get("RUNNING", 0) == 30, c
    assert c.get("COMPLETE", 0) == 30 and set(c) <= {"COMPLETE", "FAIL"}, c  # each racer finished its trials
    assert sum(made) == 30 + c.get("FAIL", 0)
    trials = load_race(location)
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no number used twice
    assert sum(1 for n in made if n) >= 2  # several processes really raced


def load_race(location: Any) -> list[Any]:
    import optuna

    from hparam_joblib.storage import open_study_readonly

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open_study_readonly(location, "race") as study:
        return list(study.trials)


# -- PostgreSQL: heartbeats from a foreign host, pre-flight ------------------------------------------


def test_stale_heartbeat_from_a_foreign_host_is_failed_and_rerun(project: Project, pg_url: str) -> None:
    """A RUNNING trial owned by another machine whose heartbeat stopped an hour ago is FAIL
    with a reason and its slot re-run; one with a fresh heartbeat is left alone until it goes
    silent for 3 heartbeat intervals."""
    project.write_config(config_yaml(n_jobs=2, n_trials=5, sleep=0, storage=pg_url))
    done = project.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    study_id = pg_query(pg_url, "SELECT study_id FROM studies WHERE study_name = 'exp_t'")[0][0]
    fakes = {}
    # "alive" beats 60 s ahead: the status command below, slow to start on a loaded machine,
    # must still see it within 3 heartbeat intervals (1 s each here).
    for label, age in (("dead", "1 hour"), ("alive", "-60 seconds")):
        (trial_id,) = pg_query(
            pg_url,
            "INSERT INTO trials (number, study_id, state, datetime_start) VALUES "
            "((SELECT COUNT(*) FROM trials WHERE study_id = %s), %s, 'RUNNING', now()) RETURNING trial_id",
            study_id, study_id,
        )[0]
        owner = {"host": f"elsewhere-{label}.example", "pid": 4242, "start": "1", "run": "foreign"}
        pg_query(pg_url, "INSERT INTO trial_system_attributes (trial_id, key, value_json) VALUES (%s, %s, %s)",
                 trial_id, OWNER, json.dumps(owner))
        pg_query(pg_url, f"INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (%s, now() - interval '{age}')",
                 trial_id)
        fakes[label] = trial_id
    status = results_cli("status", pg_url)
    assert status.returncode == 0, status.stderr
    assert "on elsewhere-dead.example pid 4242 (no heartbeat for 1h00m: its machine or process died" in status.stdout
    assert "on elsewhere-alive.example pid 4242 (last heartbeat " in status.stdout
    # The "alive" machine beats for a while (longer than the grace period), then dies.
    started = time.monotonic()
    proc = project.start("--set", "n_trials=10")
    while time.monotonic() - started < 4:
        pg_query(pg_url, "UPDATE trial_heartbeats SET heartbeat = now() WHERE trial_id = %s", fakes["alive"])
        state = pg_query(pg_url, "SELECT state FROM trials WHERE trial_id = %s", fakes["alive"])[0][0]
        assert state == "RUNNING"  # a live heartbeat keeps its trial
        time.sleep(0.3)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    states = pg_states(pg_url)
    assert states.get("COMPLETE") == 10 and "RUNNING" not in states, states
    for label in ("dead", "alive"):
        row = pg_query(
            pg_url,
            "SELECT t.state, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.trial_id = %s AND a.key = 'failure_reason'", fakes[label],
        )
        assert row and row[0][0] == "FAIL", (label, row)
        assert "no heartbeat" in json.loads(row[0][1]) and f"elsewhere-{label}" in json.loads(row[0][1])
    assert socket.gethostname() not in ("elsewhere-dead.example",)


def test_preflight_errors_are_one_line_and_create_nothing(project: Project, pg_url: str) -> None:
    """Unreachable server, wrong user, missing database, wrong direction, bad config: exit 2,
    one line naming the redacted URL, no traceback, no password, and no table created."""
    base = pg_url.rsplit("/", 1)[0]
    port = base.rsplit(":", 1)[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    cases = [
        (with_password(base.replace(f":{port}", f":{closed_port}") + "/x"), "cannot reach the server"),
        (with_password(pg_url).replace("postgres:", "nobody:", 1), "user 'nobody' does not exist"),
        (with_password(base + "/no_such_db"), "database 'no_such_db' does not exist"),
    ]
    project.write_config(config_yaml(n_jobs=1, n_trials=3, sleep=0, storage=pg_url))
    for url, expected in cases:
        started = time.monotonic()
        line = one_error_line(project.run("--set", f"storage={url}", timeout=60))
        assert expected in line and "***@" in line and SECRET not in line, line
        assert time.monotonic() - started < 30
    # A bad config with a good URL: nothing is created on the server.
    bad = one_error_line(project.run("--set", f"storage={with_password(pg_url)}", "n_trials=0", timeout=60))
    assert "n_trials" in bad and SECRET not in bad
    assert pg_tables(pg_url) == set()
    # A stored direction that differs: refused before any write.
    assert project.run(timeout=120).returncode == 0
    line = one_error_line(project.run("--set", "direction=maximize", timeout=60))
    assert "direction 'minimize'" in line and "maximize" in line
    assert pg_states(pg_url) == {"COMPLETE": 3}


def test_results_cli_reads_postgresql_and_journal(project: Project, pg_url: str, tmp_path: Path) -> None:
    """status/best/trials take a postgresql URL (password from PGPASSWORD or the URL, never
    shown) and a journal file, like a .db path; errors are one line."""
    journal = tmp_path / "j" / "exp.journal"
    project.write_config(config_yaml(n_jobs=2, n_trials=6, sleep=0, storage=pg_url))
    assert project.run(timeout=120).returncode == 0
    assert project.run("--set", f"storage=journal:{journal}", timeout=120).returncode == 0
    env = child_env()
    env["PGPASSWORD"] = SECRET
    for target in (pg_url, with_password(pg_url), str(journal), f"journal:{journal}"):
        status = results_cli("status", target, env=env)
        assert status.returncode == 0, status.stderr
        assert "trials:     6 (COMPLETE 6)" in status.stdout
        assert SECRET not in status.stdout + status.stderr
        best = results_cli("best", target, "--format", "json", env=env)
        assert best.returncode == 0 and "x" in json.loads(best.stdout)
        csv_out = tmp_path / "t.csv"
        rows = results_cli("trials", target, "--csv", str(csv_out), env=env)
        assert rows.returncode == 0 and len(csv_out.read_text().splitlines()) == 7
    line = one_error_line(results_cli("status", with_password(pg_url.rsplit("/", 1)[0] + "/nope")))
    assert "does not exist" in line and SECRET not in line
    line = one_error_line(results_cli("status", f"journal:{tmp_path / 'missing.journal'}"))
    assert "no such file" in line


# -- journal specifics ---------------------------------------------------------------------------------


def test_journal_torn_tail_is_cut_and_plain_optuna_reads_everything(project: Project) -> None:
    """``storage: journal`` writes ``<save_db_directory>/<study>.journal``. A record cut short (a
    writer killed mid-write) is dropped by the next writer; the search resumes exactly and
    Optuna's own JournalStorage reads every trial."""
    journal = project.root / "optuna_studies" / "exp_t.journal"
    project.write_config(config_yaml(n_jobs=2, n_trials=8, sleep=0, storage="journal"))
    done = project.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"database:     {journal}" in done.stdout
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code": 4, "worker_id": "torn", "study_id": 0, "datetime_st')
    done = project.run("--set", "n_trials=14", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torn last record" in done.stderr
    study = load(journal_storage(journal))
    assert counts(study) == {"COMPLETE": 14}
    assert all(OWNER in t.system_attrs and "config" in t.user_attrs for t in study.trials)


def test_server_dropping_connections_mid_search_fails_nothing(project: Project, pg_url: str) -> None:
    """The server ends every connection of the search (pg_terminate_backend) again and again:
    each storage call reconnects and is retried (a lost commit is recognised, not repeated), the
    search finishes exactly, nothing is left RUNNING, no trial fails."""
    project.write_config(config_yaml(n_jobs=3, n_trials=40, sleep=0.3, storage=pg_url))
    proc = project.start()
    wait_for(lambda: pg_states(pg_url).get("COMPLETE", 0) >= 3, 90)
    killed = 0
    while proc.poll() is None:
        rows = pg_query(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'hparam_joblib' AND datname = current_database()",
        )
        killed += len(rows)
        time.sleep(0.4)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert killed >= 5, killed
    assert pg_states(pg_url) == {"COMPLETE": 40}
    assert "Traceback" not in err and "Caught an error" not in err
    # Most dropped connections are idle in the pool and replaced by pool_pre_ping without an
    # error; one dropped inside a call is retried and counted. Either way nothing may fail.
    assert re.search(r"lock retries: \d+", out), out[-2000:]


def test_journal_survives_workers_killed_during_writes(project: Project, tmp_path: Path) -> None:
    """Near-zero-work trials (workers spend much of their time appending to the journal), a worker SIGKILLed
    again and again: the file stays readable by plain Optuna, the lock never stalls (flock dies
    with its holder), and the search ends with exactly n_trials finished."""
    journal = tmp_path / "j" / "exp.journal"
    project.write_config(config_yaml(n_jobs=3, n_trials=600, sleep=0.02, storage=f"journal:{journal}"))
    proc = project.start()
    kills = 0
    rounds = 0
    done_at_kill = -1
    while proc.poll() is None and kills < 4 and rounds < 300:
        rounds += 1
        time.sleep(0.2)
        with contextlib.suppress(Exception):
            study = load(journal_storage(journal))
            # A trial finished since the last kill: the deaths are not "in a row" (on a loaded
            # machine a replaced worker may need seconds before its first trial, and three
            # deaths in a row without one stop the search by design: max_worker_deaths).
            if finished(counts(study)) <= done_at_kill:
                continue
            # Owners of RUNNING trials that are still alive (a killed worker's trial stays
            # RUNNING until the launcher reaps it).
            pids = [p for p in running_owner_pids(study) if Path(f"/proc/{p}").exists()]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                kills += 1
                done_at_kill = finished(counts(study))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert kills >= 3, kills
    study = load(journal_storage(journal))
    c = counts(study)
    assert finished(c) == 600 and "RUNNING" not in c, c
    assert "Traceback" not in err


def test_concurrent_launches_of_one_study_cooperate(project: Project, store: Store) -> None:
    """Three launches of the same new study at once (racing to create the schema and the study):
    all succeed and the total is exact."""
    project.write_config(store.config(n_jobs=2, n_trials=30, sleep=0.1))
    launches = [project.start() for _ in range(3)]
    for proc in launches:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
    study = store.study()
    assert counts(study) == {"COMPLETE": 30}
    assert sorted(t.number for t in study.trials) == list(range(30))
    assert len({t.system_attrs[OWNER]["run"] for t in study.trials}) >= 2
    # Each launch recorded its run: appending to the history is one atomic step, not a read
    # and a write that another launch can come between (a lost entry).
    assert len(study.user_attrs["runs"]) == 3, study.user_attrs["runs"]


class Driver:
    """The DB-API calls that differ between psycopg 3 and psycopg2."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module: Any = pytest.importorskip(name)

    def connect(self, url: str) -> Any:
        return self.module.connect(url, connect_timeout=10)

    def serializable(self, conn: Any) -> None:
        if self.name == "psycopg":
            conn.isolation_level = self.module.IsolationLevel.SERIALIZABLE
        else:
            conn.set_session(isolation_level="SERIALIZABLE")

    def backend_pid(self, conn: Any) -> int:
        return int(conn.info.backend_pid if self.name == "psycopg" else conn.get_backend_pid())


@pytest.mark.parametrize("driver_name", ["psycopg", "psycopg2"])
def test_real_server_errors_are_classified_for_retry(pg_url: str, driver_name: str) -> None:
    """With either driver: a real deadlock (40P01) and a real serialization failure (40001) from
    the server are 'rolled back, safe to re-run'; a terminated connection is 'connection lost'
    (its last commit may or may not have happened); a constraint violation is not retried."""
    import threading

    from hparam_joblib.storage._retry import server_transient

    driver = Driver(driver_name)
    error = driver.module.Error
    pg_query(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    pg_query(pg_url, "INSERT INTO t VALUES (1, 0), (2, 0)")

    # Deadlock: each transaction locks one row, then wants the other's.
    a, b = driver.connect(pg_url), driver.connect(pg_url)
    errors: list[BaseException] = []
    a.cursor().execute("UPDATE t SET v = 1 WHERE id = 1")
    b.cursor().execute("UPDATE t SET v = 1 WHERE id = 2")

    def second() -> None:
        try:
            b.cursor().execute("UPDATE t SET v = 2 WHERE id = 1")
        except error as err:
            errors.append(err)

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    try:
        a.cursor().execute("UPDATE t SET v = 2 WHERE id = 2")
    except error as err:
        errors.append(err)
    thread.join(10)
    a.rollback()
    b.rollback()
    assert [server_transient(e) for e in errors] == ["rollback:deadlock detected"], errors

    # Serialization failure: two SERIALIZABLE transactions update the same row.
    for conn in (a, b):
        driver.serializable(conn)
    a.cursor().execute("SELECT v FROM t WHERE id = 1")
    b.cursor().execute("SELECT v FROM t WHERE id = 1")
    a.cursor().execute("UPDATE t SET v = 3 WHERE id = 1")
    a.commit()
    with pytest.raises(error) as serial:
        b.cursor().execute("UPDATE t SET v = 4 WHERE id = 1")
    b.rollback()
    assert server_transient(serial.value) == "rollback:serialization failure"

    # A connection the server ends; a real constraint violation.
    pid = driver.backend_pid(a)
    pg_query(pg_url, "SELECT pg_terminate_backend(%s)", pid)
    with pytest.raises(error) as lost:
        a.cursor().execute("SELECT 1")
    assert server_transient(lost.value).startswith("connection:")
    with pytest.raises(error) as dup:
        b.cursor().execute("INSERT INTO t VALUES (1, 0)")
    assert server_transient(dup.value) == ""
    b.close()


@pytest.mark.parametrize(("scheme", "printed_scheme"), [
    ("postgresql", "postgresql+psycopg"),  # the extra's driver, picked for a bare URL
    ("postgresql+psycopg2", "postgresql+psycopg2"),  # a driver the URL names is kept
])
def test_either_driver_runs_the_search_and_the_printed_dashboard_url_names_it(
    project: Project, pg_url: str, scheme: str, printed_scheme: str,
) -> None:
    """`postgresql://` runs on psycopg 3 (the `postgresql` extra), a URL naming psycopg2 on
    psycopg2; the dashboard command printed names the driver the search used, and plain Optuna
    opens the study from exactly that URL."""
    pytest.importorskip("psycopg")
    pytest.importorskip("psycopg2")
    url = with_password(pg_url).replace("postgresql://", f"{scheme}://", 1)
    project.write_config(config_yaml(n_jobs=2, n_trials=6, sleep=0.05, storage=url))
    done = project.run(timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pg_states(pg_url) == {"COMPLETE": 6}
    printed = re.search(r"dashboard:\s+optuna-dashboard (\S+)", done.stdout + done.stderr)
    assert printed, done.stdout
    assert printed.group(1).startswith(f"{printed_scheme}://postgres@"), printed.group(1)
    assert SECRET not in printed.group(1)
    assert counts(load(printed.group(1))) == {"COMPLETE": 6}


@pytest.mark.slow
@pytest.mark.timeout(660)  # two runs of the guide's 2 s trials, 300 s each at most
@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_guide_example_on_postgresql_then_ten_more(tmp_path: Path, pg_url: str, backend: str) -> None:
    """The guide's script and config, with ``--set storage=<url with a password>`` (and
    ``backend=dask dask_scheduler=local`` for a LocalCluster) and 40 of its 2 s trials (the
    SQLite test runs all 100): exactly 40 COMPLETE in n_jobs=8 distinct worker processes, then
    exactly +10; plain Optuna reads the study from the printed URL; the password is never printed."""
    import shutil

    if backend == "dask":
        pytest.importorskip("distributed")
    sets = ["backend=dask", "dask_scheduler=local"] if backend == "dask" else []

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "config", tmp_path / "config")
    shutil.copy(repo / "examples" / "your_script.py", tmp_path / "your_script.py")
    proj = Project(tmp_path)
    url = with_password(pg_url)
    started = time.monotonic()
    done = proj.run("--set", f"storage={url}", *sets, "n_trials=40", script=tmp_path / "your_script.py", timeout=300)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert pg_states(pg_url) == {"COMPLETE": 40}
    printed = re.search(r"dashboard:\s+optuna-dashboard (\S+)", done.stdout)
    assert printed and SECRET not in printed.group(1)
    study = load(printed.group(1), "ImageNet_exp_first_sweep")
    assert len(study.trials) == 40
    assert len({t.system_attrs[OWNER]["pid"] for t in study.trials}) == 8
    assert all(t.user_attrs["config"]["hidden_layers"] == 8 for t in study.trials)
    print(f"guide example, {backend} + PostgreSQL: {pg_states(pg_url)} in {elapsed:.1f} s, "
          f"{len({t.system_attrs[OWNER]['pid'] for t in study.trials})} worker pids")
    more = proj.run("--set", f"storage={url}", *sets, "n_trials=50", script=tmp_path / "your_script.py", timeout=300)
    assert more.returncode == 0, more.stderr[-2000:]
    assert pg_states(pg_url) == {"COMPLETE": 50}
    for out in (done, more):
        assert SECRET not in out.stdout + out.stderr

"""A worker's incremental read of the study (Optuna's cached storage asks for the unfinished trials
and those past the last one seen, several times per trial) must not walk the whole study: its
query plans on a real SQLite file use primary-key searches only, and it returns what Optuna's own
RDBStorage returns."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import event

from hparam_joblib.storage import RetryPolicy, StorageLocation, open_storage, prepare

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_incremental_read_is_primary_key_searches_and_matches_optuna(tmp_path: Path) -> None:
    location = StorageLocation.sqlite(tmp_path / "study.db")
    prepare(location, RetryPolicy())
    launcher = open_storage(location, create_tables=True)
    launcher.add_budget_index()
    study = optuna.create_study(storage=launcher, study_name="s")
    other = optuna.create_study(storage=launcher, study_name="other")  # interleaved trial ids
    for _ in range(30):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        other.optimize(lambda t: t.suggest_float("y", 0, 1), n_trials=1)
    running = study.ask()
    running.suggest_float("x", 0, 1)
    worker = open_storage(location, run_id="test")
    plans: list[tuple[str, list[str]]] = []

    @event.listens_for(worker.engine, "before_cursor_execute")
    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM trials" in statement:
            rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            plans.append((statement, [r[3] for r in rows]))

    sid = study._study_id
    ids = {running._trial_id}
    last = max(t._trial_id for t in study.get_trials(deepcopy=False))
    got = worker._get_trials(sid, None, ids, last - 5)
    assert plans, "no trials statement captured"
    for statement, plan in plans:
        assert not any("ix_trials_study_id" in p or p.startswith("SCAN trials") for p in plan), (statement, plan)
    plain = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}", skip_compatibility_check=True)
    want = plain._get_trials(sid, None, ids, last - 5)
    assert [(t.number, t.state, t.params, t.values) for t in got] == \
        [(t.number, t.state, t.params, t.values) for t in want]
    assert {t.number for t in got} == {running.number} | {t.number for t in want}
    assert all(t.params.keys() <= {"x"} for t in got)  # nothing of the other study
    plain.engine.dispose()
    if worker._version_conn is not None:  # the data_version connection
        worker._version_conn.close()
    worker.engine.dispose()
    _dispose(launcher)


def _dispose(storage: Any) -> None:
    """Close what a storage holds: its data_version connection and its engine's pool."""
    if storage._version_conn is not None:
        storage._version_conn.close()
    storage.engine.dispose()


def test_a_worker_opens_the_file_without_alembic_and_the_version_is_still_answered(tmp_path: Path) -> None:
    """A worker opens a schema the launcher created: no alembic import, no version-table reads
    (0.15 s per worker process), yet Optuna's version API works on it when called."""
    import subprocess
    import sys

    location = StorageLocation.sqlite(tmp_path / "study.db")
    prepare(location, RetryPolicy())
    launcher = open_storage(location, create_tables=True)
    optuna.create_study(storage=launcher, study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    head = launcher.get_head_version()
    _dispose(launcher)
    code = f"""
import sys
from hparam_joblib.storage import StorageLocation, open_storage
import optuna
import pytest
storage = open_storage(StorageLocation.sqlite({str(tmp_path / 'study.db')!r}), run_id="w")
study = optuna.load_study(study_name="s", storage=storage)
print(len(study.trials), "alembic" in sys.modules)
print(storage.get_current_version(), "alembic" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.split("\n")[:2]
    assert first == "2 False"  # the study read, alembic never imported
    assert second == f"{head} True"  # built on first use


def test_the_launcher_checks_a_stamped_schema_without_alembic_and_an_old_one_still_fails(tmp_path: Path) -> None:
    """Reopening a study (a resume, every later launch) checks the schema version with two plain
    reads, not alembic (0.17 s per launch); a schema at an older revision still gets Optuna's
    own error naming ``optuna storage upgrade``, and the head we read equals alembic's."""
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "study.db"
    location = StorageLocation.sqlite(db)
    prepare(location, RetryPolicy())
    first = open_storage(location, create_tables=True)  # a new file: Optuna's manager stamps it
    optuna.create_study(storage=first, study_name="s")
    head = first.get_head_version()  # alembic's ScriptDirectory
    _dispose(first)
    code = f"""
import sys
from hparam_joblib.storage import StorageLocation, open_storage
storage = open_storage(StorageLocation.sqlite({str(db)!r}), create_tables=True)
print("alembic" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]

    with contextlib.closing(sqlite3.connect(db)) as conn:  # as if made by an older Optuna
        conn.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
        conn.commit()
    assert head != "v3.0.0.d"
    with pytest.raises(RuntimeError, match="optuna storage upgrade"):
        open_storage(location, create_tables=True)


def test_a_new_file_gets_the_version_rows_optuna_writes_and_plain_optuna_opens_it(tmp_path: Path) -> None:
    """The launcher stamps a schema it just created without alembic; the rows equal those
    Optuna's own manager writes, and plain ``RDBStorage`` (with its compatibility check) opens it."""
    import sqlite3

    ours = tmp_path / "ours.db"
    location = StorageLocation.sqlite(ours)
    prepare(location, RetryPolicy())
    open_storage(location, create_tables=True).engine.dispose()
    theirs = tmp_path / "theirs.db"
    optuna.storages.RDBStorage(f"sqlite:///{theirs}").engine.dispose()

    def rows(db: Path) -> tuple[list[Any], list[Any], list[str]]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
            return (conn.execute("SELECT * FROM version_info").fetchall(),
                    conn.execute("SELECT * FROM alembic_version").fetchall(), tables)

    assert rows(ours) == rows(theirs)
    plain = optuna.storages.RDBStorage(f"sqlite:///{ours}")  # raises if the schema looks incompatible
    assert plain.get_current_version() == plain.get_head_version()
    plain.engine.dispose()

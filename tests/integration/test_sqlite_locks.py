"""Reading a study file must not drop this process's SQLite locks on it.

Closing any descriptor of a file drops every POSIX lock the process holds on that file, SQLite's
included. A notebook kernel holds connections to the study (the previous search's, or the user's
own ``optuna.load_study``) when it runs the next search, whose pre-flight used to read the file's
header with ``open()``. Another process closing its last connection then deleted the WAL under
the kernel's connections: their reads froze (the re-run cell waited forever for trials it could
not see) and their next write corrupted the file. Real SQLite files, real processes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from hparam_joblib.storage import open_database
from hparam_joblib.storage._sqlite import sqlite_preflight
from tests.conftest import Project, search_config, states

READERS: dict[str, Callable[[Path], object]] = {
    "search pre-flight": lambda db: sqlite_preflight(db, "s", "minimize"),
    "results commands": lambda db: open_database(str(db)),
}


def _other_process(db: Path, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", f"import sqlite3, sys, time\nc = sqlite3.connect({str(db)!r}, isolation_level=None)\n{code}"],
        stdout=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("reader", list(READERS))
def test_reading_the_file_keeps_this_process_s_locks(tmp_path: Path, reader: str) -> None:
    db = tmp_path / "s.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    optuna.create_study(storage=storage, study_name="s")
    storage.engine.dispose()
    ours = sqlite3.connect(db, isolation_level=None)  # e.g. the notebook's previous search
    ours.execute("PRAGMA journal_mode=WAL")
    ours.execute("CREATE TABLE t (x INTEGER)")
    ours.execute("INSERT INTO t VALUES (1)")

    READERS[reader](db)

    # Another process reads and closes its only connection (a dashboard, a status command).
    assert _other_process(db, "c.execute('SELECT COUNT(*) FROM t').fetchall(); c.close()").wait(60) == 0
    assert Path(f"{db}-wal").exists(), "the WAL was deleted under this process's live connection"
    # A long-lived writer (the next search's worker) commits while ours stays open.
    writer = _other_process(db, "c.executemany('INSERT INTO t VALUES (?)', [(2,)] * 5)\nprint('ok', flush=True)\n"
                                "time.sleep(30)")
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ok"
        assert ours.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 6  # froze at 1 before the fix
        ours.execute("INSERT INTO t VALUES (3)")
    finally:
        writer.kill()
        writer.wait(60)
    ours.close()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert check.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 7
    finally:
        check.close()


def test_a_file_that_is_not_sqlite_is_still_refused(tmp_path: Path) -> None:
    """The header is now checked by SQLite: text, or anything else, is refused as before."""
    from hparam_joblib._errors import StorageError

    bad = tmp_path / "s.db"
    bad.write_text("not a database, just text long enough to fill a SQLite header and more\n" * 3)
    with pytest.raises(StorageError, match="exists but is not a SQLite database"):
        sqlite_preflight(bad, "s", "minimize")
    with pytest.raises(StorageError, match="is not a SQLite database"):
        open_database(str(bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # no -wal/-shm side files


TWO_SEARCHES = '''
import json, os
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    return config["x"]

def open_on_the_study():
    """This process's descriptors on the study's files (the database, -wal, -shm, lock)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "exp_t.db" in target:
            found.append(target)
    return found

if __name__ == "__main__":
    first = train([])                          # a notebook cell
    after_first = open_on_the_study()
    second = train(["--set", "n_trials=8"])    # the next cell: more trials of the same study
    print(json.dumps({"after_first": after_first, "after_second": open_on_the_study(),
                      "counts": [first.counts, second.counts]}))
'''

TWO_SEARCHES_CONFIG = search_config(n_trials=4, n_startup_trials=None, sampler="{type: random}")


def test_a_search_leaves_no_connection_open_in_the_calling_process(project: Project) -> None:
    """After a search returns, the calling process (a notebook kernel) holds nothing open on the
    study: the next search starts from a clean slate, and the user can move or delete the file."""
    project.script.write_text(TWO_SEARCHES)
    project.write_config(TWO_SEARCHES_CONFIG)
    done = project.run()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["after_first"] == [] and seen["after_second"] == [], seen
    assert seen["counts"] == [{"COMPLETE": 4}, {"COMPLETE": 8}]
    assert states(project.db("exp_t")) == {"COMPLETE": 8}


def test_loops_that_keep_finding_the_study_done_reopen_then_stop_the_launcher(tmp_path: Path) -> None:
    """The guard behind the stale reads above: loky loops that end one after another without a
    trial while the launcher's finished count stands still make it read over new connections
    once, then stop the search with one line, instead of restarting loops for ever."""
    from hparam_joblib._errors import StorageError
    from hparam_joblib.runtime.launcher._early_ends import EarlyEnds
    from hparam_joblib.runtime.loops._task import WorkerReport
    from hparam_joblib.storage import StorageLocation, open_storage, prepare
    from hparam_joblib.storage._retry import RetryPolicy

    location = StorageLocation.sqlite(tmp_path / "s.db")
    prepare(location, RetryPolicy())
    storage = open_storage(location, create_tables=True)
    optuna.create_study(storage=storage, study_name="s")  # type: ignore[arg-type]
    study_id = storage.get_study_id_from_name("s")
    idle = [WorkerReport(pid=1, trials_run=0, lock_retries=0)]
    busy = [WorkerReport(pid=1, trials_run=1, lock_retries=0)]
    guard = EarlyEnds(4, location.display, 10)
    for _ in range(3):
        guard.check(idle, 2, storage)
    guard.check(busy, 2, storage)   # a loop that ran a trial: not in a row
    guard.check(idle, 3, storage)   # the count moved: not in a row
    for _ in range(3):
        guard.check(idle, 3, storage)
    assert storage.count_states(study_id) == {}
    assert storage.engine.pool.checkedin() > 0  # type: ignore[attr-defined]
    guard.check(idle, 3, storage)   # the 4th in a row: new connections
    assert storage.engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    assert storage.count_states(study_id) == {}  # and reads work again over them
    for _ in range(3):
        guard.check(idle, 3, storage)
    with pytest.raises(StorageError, match=r"keep finding the study done while the launcher reads 3 of 10"):
        guard.check(idle, 3, storage)
    storage.close()

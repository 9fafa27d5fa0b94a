"""The SQLite file's specifics: connections with the pragmas every process needs, WAL, the
writers' flock queue, and what reads the file without changing it: the pre-flight, the kind of
a file, the study names on a read-only connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from hparam_joblib._errors import StorageBusyError, StorageError
from hparam_joblib._flock import FileLock
from hparam_joblib.storage._location import check_directions, check_directory
from hparam_joblib.storage._owners import describe_holders
from hparam_joblib.storage._retry import RetryPolicy, is_lock_error

logger = logging.getLogger("hparam_joblib")


SQLITE_MAGIC = b"SQLite format 3\x00"


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """One SQLite connection with the pragmas every process needs."""
    # isolation_level=None: pysqlite must not open transactions itself (it would run a SELECT
    # outside the transaction and break read-then-write atomicity); SearchStorage emits BEGIN.
    conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
    # WAL + synchronous=NORMAL: a commit is durable against any process crash (kill -9 included);
    # only an OS crash or power loss can drop the last commits. No fsync per trial.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return conn


def enable_wal(db_path: Path, policy: RetryPolicy) -> None:
    """Switch the file to WAL (persistent; done by the launcher before any worker starts).

    Changing the journal mode needs the file to itself, so when another launch of the same study
    is setting it up at this moment, SQLite says "locked" at once: retry within the policy.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        conn = sqlite3.connect(str(db_path), timeout=policy.busy_timeout)
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("%s: could not enable WAL (journal_mode=%s)", db_path, mode)
            return
        except sqlite3.OperationalError as err:
            if not is_lock_error(err):
                raise StorageError(str(db_path), f"cannot open the database ({err})") from err
            attempt += 1
            if time.monotonic() - start >= policy.deadline:
                raise StorageBusyError(str(db_path), attempt, describe_holders(str(db_path))) from err
            time.sleep(policy.delay(attempt))
        finally:
            conn.close()


class _WriteLock(FileLock):
    """A kernel file lock (flock) that our writers queue on before SQLite's write lock.

    SQLite's busy handler sleeps and polls (up to 100 ms a nap), so with dozens of writers the
    lock sits free while they sleep: p99 latency of seconds. flock waiters are woken the moment
    it is released. Readers never take it (WAL readers do not block). The kernel drops the lock
    when a holder dies, so a killed process cannot leave it held.
    """


def sqlite_file_kind(path: Path) -> str:
    """``"sqlite"`` (a SQLite database; an empty file is one), ``"damaged"`` (SQLite's header but
    SQLite cannot read it) or ``"other"`` (not SQLite: text, a journal, anything else).

    Asked through SQLite first, never by reading the header with ``open()``: closing any
    descriptor of a file drops every POSIX lock this process holds on it, SQLite's included. A
    live connection of this process (the previous search's in a notebook kernel, or the user's
    own ``optuna.load_study``) would go on as if it held its lock, so another process closing its
    last connection deletes the WAL under it: its reads freeze at that moment and its next write
    corrupts the file. SQLite's own opens are safe (it keeps a descriptor open while the process
    holds locks on the file). Only a file SQLite refuses, which no connection can be using, is
    read directly. ``immutable=1``: no lock taken, no -wal/-shm file, nothing written.

    Raises:
        sqlite3.Error: SQLite cannot open the file (for another reason than its content).
    """
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as err:
        if "not a database" not in str(err):
            raise
    else:
        return "sqlite"
    finally:
        conn.close()
    return _refused_kind(path)


def _refused_kind(path: Path) -> str:
    """For a file SQLite refused as "not a database" (so no connection can be using it, and
    reading it directly is safe): ``"damaged"`` with SQLite's header, else ``"other"``."""
    with open(path, "rb") as handle:
        return "damaged" if handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC else "other"


def sqlite_preflight(db_path: Path, study_name: str, direction: str | Sequence[str]) -> bool:
    """Check the save directory and an existing database without changing anything.

    Returns:
        True when the study already exists in the file (a resume).

    Raises:
        StorageError: unwritable directory, a file that is not SQLite, an unreadable database,
            or a stored direction that differs from the config.
    """
    check_directory(str(db_path.parent), db_path.parent, "save directory")
    if not db_path.exists():
        return False
    if db_path.is_dir():
        raise StorageError(str(db_path), "is a directory, not a database file")
    if not os.access(db_path, os.R_OK | os.W_OK):
        raise StorageError(str(db_path), "database file is not readable and writable")
    if db_path.stat().st_size == 0:
        return False
    # The file is read through SQLite only (see sqlite_file_kind): a file it refuses is then
    # told apart as not SQLite at all, or damaged.
    try:
        # Without a -wal file the database is fully checkpointed: open it immutable so that not
        # even -wal/-shm side files appear (bad input must leave the disk as it was).
        has_wal = Path(f"{db_path}-wal").exists()
        uri = f"file:{db_path}?mode=ro" + ("" if has_wal else "&immutable=1")
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"studies", "study_directions"} <= tables:
                # No schema yet, or part of one: another launch is creating it right now (the
                # schema step after us completes it). Not a study yet.
                return False
            rows = conn.execute(
                "SELECT d.direction FROM studies s JOIN study_directions d ON d.study_id = s.study_id "
                "WHERE s.study_name = ? ORDER BY d.objective",
                (study_name,),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        if "not a database" in str(err) and _refused_kind(db_path) == "other":
            raise StorageError(str(db_path), "exists but is not a SQLite database; move it or pick another tag") from err
        raise StorageError(str(db_path), f"cannot read the database ({err})") from err
    if not rows:
        return False
    expected = [direction] if isinstance(direction, str) else list(direction)
    check_directions(str(db_path), study_name, [str(r[0]).lower() for r in rows], expected)
    return True




def sqlite_studies(where: str, path: Path) -> tuple[tuple[str, ...], str]:
    """The names of the studies in the SQLite file ``path``, and the read-only URI that read them.

    Raises:
        StorageError: no Optuna schema, or SQLite cannot read the file (names ``where``).
    """
    path = path.resolve()
    last: sqlite3.Error | None = None
    # mode=ro never writes; immutable=1 is the fallback when the -shm file cannot be created
    # (a read-only directory).
    for query in ("?mode=ro", "?mode=ro&immutable=1"):
        uri = path.as_uri() + query
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=10)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "studies" not in tables:
                    raise StorageError(
                        where, "is a SQLite database but holds no Optuna study (no 'studies' table)"
                    )
                names = tuple(r[0] for r in conn.execute("SELECT study_name FROM studies ORDER BY study_id"))
            finally:
                conn.close()
        except sqlite3.OperationalError as err:
            if "unable to open" not in str(err):  # e.g. locked: immutable=1 would read torn pages
                raise StorageError(where, f"cannot read the database ({err})") from err
            last = err
            continue
        except sqlite3.DatabaseError as err:
            raise StorageError(where, f"cannot read the database ({err})") from err
        return names, uri
    raise StorageError(where, f"cannot read the database ({last})") from last

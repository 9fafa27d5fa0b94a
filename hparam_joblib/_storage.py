"""RDB storage (the SQLite file, or a PostgreSQL server): pre-flight checks, tuned connections,
retries, the exact trial budget, heartbeats, and reaping trials whose owner process died.

Why a subclass of Optuna's ``RDBStorage``:

* every storage call is retried when SQLite reports a lock, or PostgreSQL a deadlock, a
  serialization failure or a lost connection (bounded, jittered, counted), so a transient error
  never reaches ``study.optimize`` (where an error inside ``tell`` leaves a trial RUNNING);
* trial creation checks the budget in the same transaction that numbers the trial, so
  ``n_trials`` holds across workers, runs and concurrent launches (SQLite serialises writers;
  on PostgreSQL the study row's ``SELECT ... FOR UPDATE`` serialises trial creators);
* the trial's owner (host, pid, process start time) is written in that same transaction, so a
  trial left RUNNING by a dead process can be recognised at once on this host; on a server
  the trial's first heartbeat is written there too, so a trial of a machine that died is
  recognised by its silence even before its first beat.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import functools
import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import optuna
from optuna import distributions as optuna_distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import bindparam, event, func, or_, select
from sqlalchemy import exc as sqlalchemy_exc

from hparam_joblib._errors import StorageBusyError, StorageError
from hparam_joblib._storage_spec import redact_url

logger = logging.getLogger("hparam_joblib")

OWNER_KEY = "hparam_joblib:owner"
#: States that use up a slot of the budget. FAIL (a crashed or interrupted trial) does not.
BUDGET_STATES = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def n_finished(counts: dict[str, int]) -> int:
    """COMPLETE + PRUNED in a ``count_states`` result: the trials that count toward n_trials."""
    return sum(counts.get(s.name, 0) for s in FINISHED_STATES)


def n_taken(counts: dict[str, int]) -> int:
    """Trials that hold a budget slot (finished, running or queued) in a ``count_states`` result."""
    return sum(counts.get(s.name, 0) for s in BUDGET_STATES)


SQLITE_MAGIC = b"SQLite format 3\x00"

T = TypeVar("T")


class BudgetExhausted(Exception):
    """Internal: every slot of ``n_trials`` is taken (finished, running or queued)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a storage call that hits a SQLite lock.

    ``busy_timeout`` is SQLite's own wait inside one attempt; between attempts we back off
    exponentially with full jitter, up to ``deadline`` seconds in all.
    """

    deadline: float = 120.0
    busy_timeout: float = 10.0
    base_delay: float = 0.02
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        """Jittered exponential backoff before attempt ``attempt + 1``."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (absolute, so workers agree on it)."""
    return f"sqlite:///{path.resolve()}"


#: Seconds a connection attempt to a database server may take before it is an error.
CONNECT_TIMEOUT = 10


@functools.cache
def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def driver_url(url: str) -> str:
    """``url`` with an installed driver named: SQLAlchemy 2.1 maps a bare ``postgresql://`` to
    psycopg 3, so with only psycopg2 installed the URL must say ``postgresql+psycopg2://``."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() == "postgresql" and not _installed("psycopg") and _installed("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return url


def connect_args(url: str, read_only: bool = False) -> dict[str, Any]:
    """Driver options for a server: a bounded connect timeout, and read-only sessions."""
    if "+pg8000" in url.split("://", 1)[0]:
        return {"timeout": CONNECT_TIMEOUT}
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "hparam_joblib"}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    return args


@dataclass(frozen=True)
class StorageLocation:
    """Where a study lives; small and picklable (workers open their own storage from it).

    Attributes:
        kind: ``sqlite``, ``postgresql`` or ``journal``.
        path: the SQLite file or the journal file (absolute); empty for a server.
        url: the server's SQLAlchemy URL, password included: never shown (see :attr:`display`).
    """

    kind: Literal["sqlite", "postgresql", "journal"]
    path: str = ""
    url: str = field(default="", repr=False)

    @classmethod
    def sqlite(cls, path: Path) -> StorageLocation:
        return cls("sqlite", path=str(Path(path).resolve()))

    @property
    def is_server(self) -> bool:
        """True for a database server other machines may share (heartbeats, no flock)."""
        return self.kind == "postgresql"

    @property
    def display(self) -> str:
        """How the storage is shown: the file, or the URL with its password as ``***``."""
        if self.kind == "postgresql":
            return redact_url(self.url)
        return self.path

    @property
    def public_url(self) -> str:
        """What Optuna tools take without a secret: ``sqlite:///FILE``, the journal file, or the
        server URL without its password (libpq then reads PGPASSWORD or ~/.pgpass)."""
        if self.kind == "postgresql":
            from sqlalchemy.engine import make_url

            try:
                return make_url(driver_url(self.url))._replace(password=None).render_as_string(hide_password=False)
            except Exception:  # noqa: BLE001 - never echo an unparsable URL
                return redact_url(self.url)
        if self.kind == "journal":
            return self.path
        return sqlite_url(Path(self.path))

    def __str__(self) -> str:
        return self.display


def is_lock_error(err: BaseException) -> bool:
    """True when SQLite's 'database is locked/busy' is anywhere in the cause chain.

    Optuna wraps it in ``StorageInternalError`` (whose message blames data length).
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if isinstance(current, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return True
        if type(current).__name__ == "OperationalError" and "database is locked" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


#: PostgreSQL SQLSTATEs after which the transaction was rolled back and may simply be re-run.
_PG_RETRY_CODES = {"40001": "serialization failure", "40P01": "deadlock detected"}
#: SQLSTATEs of a connection the server ended (the last commit's fate may be unknown).
_PG_CONNECTION_CODES = {
    "57P01": "the server ended the connection (admin shutdown)",
    "57P02": "the server crashed",
    "57P03": "the server is starting up or shutting down",
}


def _causes(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not c for c in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def server_transient(err: BaseException) -> str:
    """Why ``err`` is a transient server error worth retrying, or ''.

    ``rollback:...``: the server rolled the transaction back (deadlock, serialization
    failure): re-running it is safe. ``connection:...``: the connection broke; the last commit
    may or may not have happened (the callers make their writes safe to repeat).
    """
    for cause in _causes(err):
        code = getattr(cause, "pgcode", None)
        if code in _PG_RETRY_CODES:
            return f"rollback:{_PG_RETRY_CODES[code]}"
        if code in _PG_CONNECTION_CODES or (isinstance(code, str) and code.startswith("08")):
            return f"connection:{_PG_CONNECTION_CODES.get(code, 'connection failure')}"
        if getattr(cause, "connection_invalidated", False) or type(cause).__name__ == "PendingRollbackError":
            # PendingRollbackError: a session whose connection broke earlier, not yet rolled back.
            return "connection:the connection to the server was lost"
        name = type(cause).__name__
        module = type(cause).__module__
        if module.startswith("psycopg") and name in ("OperationalError", "InterfaceError") and code is None:
            text = " ".join(str(cause).split())[:200]
            return f"connection:{text}"
    return ""


def _is_setup_race(err: BaseException) -> bool:
    """A schema-creation error caused by another launch creating the same schema."""
    text = str(err).lower()
    return "already exists" in text or "unique constraint" in text or "integrityerror" in text


def process_start_time(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def owner_record(run_id: str) -> dict[str, Any]:
    """Who runs a trial: host, pid, process start time and the launch it belongs to."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start_time(pid), "run": run_id}


def owner_is_dead(owner: dict[str, Any]) -> bool:
    """True when ``owner`` ran on this host and that process no longer exists."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = process_start_time(pid)
    return owner.get("start") is not None and started is not None and started != owner["start"]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def describe_holders(db_path: str, family: int | None = None) -> str:
    """Name the processes that have the database file open, other than this search's own.

    Args:
        db_path: the database file.
        family: the launcher's pid; it and its children (our workers) are left out.
    """
    targets = {os.path.realpath(db_path + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
    holders: list[str] = []
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return "another process holds a write transaction on it"
    for pid in pids:
        if pid == me or (family is not None and (pid == family or _ppid(pid) == family)):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            opened = any(os.path.realpath(f"/proc/{pid}/fd/{fd}") in targets for fd in fds)
        except OSError:
            continue
        if opened:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
                    name = handle.read().strip()
            except OSError:
                name = "?"
            holders.append(f"{pid} ({name})")
    if not holders:
        return "another process holds a write transaction on it"
    return "processes with it open: " + ", ".join(holders[:8])


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


@dataclass
class _PendingWrites:
    """Params and system attrs of a trial this process runs, not yet written (see flush_trial)."""

    #: (name, internal value, distribution, distribution to check against or None: look it up)
    params: list[tuple[str, float, Any, Any]]
    system_attrs: dict[str, Any]


_T = models.TrialModel.__table__
_P = models.TrialParamModel.__table__
_V = models.TrialValueModel.__table__
_UA = models.TrialUserAttributeModel.__table__
_SA = models.TrialSystemAttributeModel.__table__
_IV = models.TrialIntermediateValueModel.__table__
_TRIAL_COLS = (_T.c.trial_id, _T.c.number, _T.c.state, _T.c.datetime_start, _T.c.datetime_complete)


def _trial_filter(states: bool, by_id: bool) -> Any:
    """The WHERE clause of a trials read (bound parameters: sid, ids, gt, states, tid)."""
    if by_id:
        return _T.c.trial_id == bindparam("tid")
    clause = (_T.c.study_id == bindparam("sid")) & or_(
        _T.c.trial_id.in_(bindparam("ids", expanding=True)), _T.c.trial_id > bindparam("gt")
    )
    if states:
        clause = clause & _T.c.state.in_(bindparam("states", expanding=True))
    return clause


def _child_selects(where: Any) -> dict[str, Any]:
    sub = select(_T.c.trial_id).where(where).scalar_subquery()
    return {
        "params": select(_P.c.trial_id, _P.c.param_name, _P.c.param_value, _P.c.distribution_json)
        .where(_P.c.trial_id.in_(sub)).order_by(_P.c.param_id),
        "values": select(_V.c.trial_id, _V.c.objective, _V.c.value, _V.c.value_type).where(_V.c.trial_id.in_(sub)),
        "user": select(_UA.c.trial_id, _UA.c.key, _UA.c.value_json).where(_UA.c.trial_id.in_(sub)),
        "system": select(_SA.c.trial_id, _SA.c.key, _SA.c.value_json).where(_SA.c.trial_id.in_(sub)),
        "steps": select(_IV.c.trial_id, _IV.c.step, _IV.c.intermediate_value, _IV.c.intermediate_value_type)
        .where(_IV.c.trial_id.in_(sub)),
    }


def _upsert_attrs(conn: Any, table: Any, trial_id: int, items: dict[str, Any]) -> None:
    """Set attrs of a trial, replacing same-key rows ((trial_id, key) is unique), on any dialect."""
    keys = list(items)
    conn.execute(table.delete().where(table.c.trial_id == trial_id, table.c.key.in_(keys)))
    conn.execute(table.insert(), [{"trial_id": trial_id, "key": k, "value_json": json.dumps(items[k])} for k in keys])


_PAST_TRIALS = select(func.count(_T.c.trial_id)).where(
    _T.c.study_id == bindparam("sid"), _T.c.trial_id < bindparam("tid")
)
_TRIAL_STATE = select(_T.c.state).where(_T.c.trial_id == bindparam("tid"))
_TRIAL_STATE_FOR_UPDATE = _TRIAL_STATE.with_for_update()
_STUDY_EXISTS = select(models.StudyModel.__table__.c.study_id).where(
    models.StudyModel.__table__.c.study_id == bindparam("sid")
)
#: Prebuilt Core statements (SQLAlchemy caches their compiled form): one per read shape.
_READS: dict[tuple[bool, bool], tuple[Any, dict[str, Any]]] = {}
for _states in (False, True):
    for _by_id in (False, True):
        _where = _trial_filter(_states, _by_id)
        _READS[(_states, _by_id)] = (
            select(*_TRIAL_COLS).where(_where).order_by(_T.c.trial_id), _child_selects(_where)
        )


@functools.lru_cache(maxsize=256)
def _distribution(text: str) -> Any:
    return optuna_distributions.json_to_distribution(text)


def _local(stamp: Any) -> Any:
    """Naive UTC as stored -> naive local time, as Optuna's TrialModel properties do."""
    if stamp is None:
        return None
    return stamp.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def _read_trials(conn: Any, by_id: bool, states: Any, binds: dict[str, Any]) -> list[FrozenTrial]:
    """Trials as Optuna's ``_build_frozen_trial_from_trial_model`` builds them, read with six
    Core statements (no ORM objects, no lazy loads) in the caller's transaction."""
    trial_stmt, children = _READS[(states is not None, by_id)]
    if states is not None:
        binds = {**binds, "states": list(states)}
    rows = conn.execute(trial_stmt, binds).all()
    if not rows:
        return []
    params: dict[int, list[tuple[str, float, str]]] = {}
    values: dict[int, dict[int, float]] = {}
    user: dict[int, dict[str, Any]] = {}
    system: dict[int, dict[str, Any]] = {}
    steps: dict[int, dict[int, float]] = {}
    for tid, name, value, dist in conn.execute(children["params"], binds):
        params.setdefault(tid, []).append((name, value, dist))
    for tid, objective, value, kind in conn.execute(children["values"], binds):
        values.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
    for tid, key, text in conn.execute(children["user"], binds):
        user.setdefault(tid, {})[key] = json.loads(text)
    for tid, key, text in conn.execute(children["system"], binds):
        system.setdefault(tid, {})[key] = json.loads(text)
    for tid, step, value, kind in conn.execute(children["steps"], binds):
        steps.setdefault(tid, {})[step] = (
            models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
        )
    trials = []
    for tid, number, state, start, complete in rows:
        dists = {name: _distribution(dist) for name, _, dist in params.get(tid, ())}
        objective_values = values.get(tid)
        trials.append(FrozenTrial(
            number=number, state=state, value=None,
            values=[objective_values[i] for i in sorted(objective_values)] if objective_values else None,
            datetime_start=_local(start), datetime_complete=_local(complete),
            params={name: dists[name].to_external_repr(value) for name, value, _ in params.get(tid, ())},
            distributions=dists, user_attrs=user.get(tid, {}), system_attrs=system.get(tid, {}),
            intermediate_values=steps.get(tid, {}), trial_id=tid,
        ))
    return trials


class _WriteLock:
    """A kernel file lock (flock) that our writers queue on before SQLite's write lock.

    SQLite's busy handler sleeps and polls (up to 100 ms a nap), so with dozens of writers the
    lock sits free while they sleep: p99 latency of seconds. flock waiters are woken the moment
    it is released. Readers never take it (WAL readers do not block). The kernel drops the lock
    when a holder dies, so a killed process cannot leave it held.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.pid = -1

    def acquire(self) -> None:
        if self.pid != os.getpid():  # opened per process: a forked copy must not share it
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.pid = os.getpid()
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


_RETRIED_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "get_all_trials",
    "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "record_heartbeat", "_get_stale_trial_ids",
    # Optuna's _CachedStorage calls this private method of its backend directly.
    "_get_best_trial_id",
)


class _DropReconnectNoise(logging.Filter):
    """Optuna logs a warning with the whole SQL text when a trials query fails, then retries it
    on the same broken connection; our retry reconnects and says nothing. Drop that warning
    when the cause is a lost server connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Caught an error from sqlalchemy") and (
            "server closed the connection" in text or "terminating connection" in text
            or "connection already closed" in text
        ))


_RECONNECT_FILTER = _DropReconnectNoise()


class SearchStorage(RDBStorage):
    """Optuna's RDBStorage on one SQLite file or a PostgreSQL database, with retries, a budget,
    trial owners and (on a server) heartbeats.

    Args:
        location: where the study lives (a :class:`StorageLocation`, or a SQLite file's path).
        budget: the study's ``n_trials``; ``None`` for no limit (read-only uses).
        run_id: identifies this launch in the trials it creates.
        policy: the retry policy (SQLite locks; server deadlocks and lost connections).
        create_tables: create the schema (the launcher does; workers skip it).
        heartbeat_interval: seconds between heartbeats of a running trial (servers only; a trial
            silent for 3 intervals is failed). ``None``: no heartbeat.
    """

    def __init__(
        self,
        location: StorageLocation | Path,
        *,
        budget: int | None = None,
        run_id: str = "",
        policy: RetryPolicy | None = None,
        create_tables: bool = False,
        heartbeat_interval: float | None = None,
    ) -> None:
        if not isinstance(location, StorageLocation):
            location = StorageLocation.sqlite(Path(location))
        self.location = location
        self.is_sqlite = location.kind == "sqlite"
        #: Named in errors: the SQLite file, or the server URL without its password.
        self.db_path = location.path if self.is_sqlite else location.display
        self.policy = policy or RetryPolicy()
        self.budget = budget
        self.run_id = run_id
        #: The launcher's pid: its processes are not named as lock holders.
        self.family: int | None = None
        self.lock_retries = 0
        self.created_trial_ids: set[int] = set()
        #: Wall time of each top-level storage call (seconds), for the contention benchmark.
        self.op_seconds: list[float] = []
        self.lock_wait_seconds = 0.0
        self._tx = threading.local()
        self._write_lock = _WriteLock(self.db_path + ".lock") if self.is_sqlite else None
        url = sqlite_url(Path(self.db_path)) if self.is_sqlite else driver_url(location.url)
        engine_kwargs: dict[str, Any]
        if self.is_sqlite:
            engine_kwargs = {"creator": functools.partial(_connect, self.db_path, self.policy.busy_timeout)}
        else:
            # pool_pre_ping: a connection the server dropped while a long trial ran is replaced
            # instead of failing the trial's final write.
            engine_kwargs = {"pool_pre_ping": True, "connect_args": connect_args(url)}
        self._retry(
            lambda: RDBStorage.__init__(
                self,
                url,
                engine_kwargs=engine_kwargs,
                skip_table_creation=not create_tables,
                skip_compatibility_check=not create_tables,
            ),
            write=create_tables,  # workers only open the file: no need to queue as writers
            setup=create_tables,
        )
        if heartbeat_interval is not None and not self.is_sqlite:
            # Set after construction: Optuna's constructor wants whole seconds and warns.
            self.heartbeat_interval = heartbeat_interval  # type: ignore[assignment]
            self.grace_period = 3 * heartbeat_interval  # type: ignore[assignment]
        if self.is_sqlite:
            event.listen(self.engine, "begin", self._on_begin)
        else:
            rdb_logger = logging.getLogger("optuna.storages._rdb.storage")
            if _RECONNECT_FILTER not in rdb_logger.filters:
                rdb_logger.addFilter(_RECONNECT_FILTER)
        self._pending_attrs: dict[int, dict[str, Any]] = {}
        self._pending: dict[int, _PendingWrites] = {}  # params and system attrs of our trials
        self._version_conn: sqlite3.Connection | None = None
        self._version_pid = -1
        self._last_read: tuple[int, int] | None = None
        self.reads_skipped = 0
        #: Heartbeat-stale trials this process failed (trial numbers).
        self.stale_reaped: list[int] = []

    def _reset_session(self) -> None:
        """Roll back and drop this thread's session after an error: a session whose connection
        broke stays unusable (PendingRollbackError) until rolled back, and a half-built write
        (pending attrs added before the failure) must not leak into the next call."""
        with contextlib.suppress(Exception):  # the connection may be gone; remove() still resets
            self.scoped_session.rollback()
        self.scoped_session.remove()

    def _on_begin(self, conn: Any) -> None:
        # Writes take SQLite's write lock up front (BEGIN IMMEDIATE): the budget count and the
        # insert are then atomic, and a busy writer waits in busy_timeout instead of failing
        # with a stale snapshot. Reads stay deferred and never block in WAL mode.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if getattr(self._tx, "write", False) else "BEGIN")

    def __reduce__(self) -> Any:
        raise TypeError("SearchStorage is opened per process from its location; do not pickle it")

    # -- retries ---------------------------------------------------------------------------
    def _retry(
        self,
        call: Callable[[], T],
        write: bool = False,
        setup: bool = False,
        after_lost_commit: Callable[[], T | None] | None = None,
    ) -> T:
        start = time.monotonic()
        attempt = 0
        outer = getattr(self._tx, "write", False)
        nested = getattr(self._tx, "depth", 0)
        self._tx.write = outer or write
        self._tx.depth = nested + 1
        locked = write and not outer and self._write_lock is not None
        if locked:
            assert self._write_lock is not None
            self._write_lock.acquire()
        try:
            return self._retry_loop(call, start, attempt, setup, after_lost_commit)
        finally:
            if locked:
                assert self._write_lock is not None
                self._write_lock.release()
            self._tx.write = outer
            self._tx.depth = nested
            if nested == 0:
                self.op_seconds.append(time.monotonic() - start)
                self._tx.lost_commit = False

    def _retry_loop(
        self,
        call: Callable[[], T],
        start: float,
        attempt: int,
        setup: bool = False,
        after_lost_commit: Callable[[], T | None] | None = None,
    ) -> T:
        while True:
            try:
                return call()
            except Exception as err:
                if getattr(self._tx, "lost_commit", False) and after_lost_commit is not None and isinstance(
                    err, optuna.exceptions.UpdateFinishedTrialError
                ):
                    # The connection broke during our previous attempt's commit, and now the
                    # trial is finished: if it holds what we wrote, that commit went through.
                    done = after_lost_commit()
                    if done is not None:
                        return done
                # Two launches creating the schema at once: the loser sees "table already
                # exists" or a duplicate version row; the next attempt finds it all in place.
                transient = "" if self.is_sqlite else server_transient(err)
                if not self.is_sqlite:
                    self._reset_session()
                if not (is_lock_error(err) or transient or (setup and _is_setup_race(err))):
                    raise
                if transient.startswith("connection:"):
                    self._tx.lost_commit = True
                attempt += 1
                waited = time.monotonic() - start
                if waited >= self.policy.deadline:
                    if transient:
                        raise StorageError(
                            self.db_path,
                            f"the database server kept failing for {waited:.0f} s "
                            f"({attempt} attempts; last: {transient.split(':', 1)[1]})",
                        ) from err
                    raise StorageBusyError(
                        self.db_path, attempt, describe_holders(self.db_path, self.family)
                    ) from err
                self.lock_retries += 1
                pause = min(self.policy.delay(attempt), max(0.0, self.policy.deadline - waited))
                if transient:
                    pause = max(pause, 0.05 if transient.startswith("rollback:") else 0.5)
                    logger.debug("server error (%s; attempt %d); retrying in %.3fs", transient, attempt, pause)
                else:
                    logger.debug("SQLite locked (attempt %d); retrying in %.3fs", attempt, pause)
                time.sleep(pause)
                self.lock_wait_seconds += pause

    # -- budget-aware trial creation ---------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # Optuna's _CachedStorage calls this directly; replaces Optuna's own 5-try loop (which
        # sleeps up to 2 s per try) with our bounded, counted retry.
        token = uuid.uuid4().hex[:16]  # finds this trial again if the commit's fate is unknown
        frozen = self._retry(lambda: self._create_trial_once(study_id, template_trial, token), write=True)
        self.created_trial_ids.add(frozen._trial_id)
        if template_trial is None:  # this process is its only writer until it finishes
            self._mirror()[frozen._trial_id] = copy.deepcopy(frozen)
        return frozen

    def _create_trial_once(self, study_id: int, template_trial: FrozenTrial | None, token: str = "") -> FrozenTrial:
        if template_trial is None and getattr(self._tx, "lost_commit", False):
            found = self._find_created(study_id, token)  # the lost commit may have gone through
            if found is not None:
                return found
        with _create_scoped_session(self.scoped_session) as session:
            # Locks the study row on servers; on SQLite the first write takes the file lock, and
            # SQLite's serialisable isolation turns a stale count into a lock error we retry.
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            if self.budget is not None:
                taken = (
                    session.query(func.count(models.TrialModel.trial_id))
                    .filter(models.TrialModel.study_id == study_id)
                    .filter(models.TrialModel.state.in_(BUDGET_STATES))
                    .scalar()
                )
                if taken >= self.budget:
                    raise BudgetExhausted(f"{taken} of {self.budget} trials taken")
            trial = self._get_prepared_new_trial(study_id, template_trial, session)
            trial_id, number = int(trial.trial_id), int(trial.number)
            owner = None
            if template_trial is None:
                owner = owner_record(self.run_id)
                if not self.is_sqlite:
                    owner["token"] = token
                    # The first heartbeat, with the trial: a machine that dies before the
                    # worker's heartbeat thread beats once still leaves a trial that goes stale.
                    session.add(models.TrialHeartbeatModel(trial_id=trial_id))
                self._set_trial_attr_without_commit(
                    session, models.TrialSystemAttributeModel, trial_id, OWNER_KEY, owner
                )
            if template_trial is not None:
                frozen = copy.deepcopy(template_trial)
                frozen.number = number
                frozen.datetime_start = trial.datetime_start
                frozen._trial_id = trial_id
                return frozen
            return FrozenTrial(
                number=number, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=trial.datetime_start, datetime_complete=None, params={},
                distributions={}, user_attrs={}, system_attrs={OWNER_KEY: owner},
                intermediate_values={}, trial_id=trial_id,
            )

    def _find_created(self, study_id: int, token: str) -> FrozenTrial | None:
        """The RUNNING trial this process created with ``token``, if its commit went through."""
        for trial_id, _number, owner in self.running_owners(study_id):
            if owner.get("token") == token:
                return RDBStorage.get_trial(self, trial_id)
        return None

    # -- the rows of a new trial and of attributes, in Core (Optuna's ORM path costs ~3x the CPU) --
    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: Any
    ) -> models.TrialModel:
        if template_trial is not None:  # enqueued / added trials: Optuna's own code
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        conn = session.connection()
        trial = models.TrialModel(study_id=study_id, state=TrialState.RUNNING)
        trial.datetime_start = datetime.datetime.now()
        result = conn.execute(_T.insert().values(
            study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=trial._datetime_start_utc
        ))
        trial.trial_id = int(result.inserted_primary_key[0])
        # Optuna numbers a trial by the trials of its study with a smaller id (same rule).
        trial.number = int(conn.execute(_PAST_TRIALS, {"sid": study_id, "tid": trial.trial_id}).scalar())
        conn.execute(_T.update().where(_T.c.trial_id == trial.trial_id).values(number=trial.number))
        return trial

    def _set_trial_attr_without_commit(
        self, session: Any, model_cls: Any, trial_id: int, key: str, value: Any
    ) -> None:
        conn = session.connection()
        state = conn.execute(_TRIAL_STATE, {"tid": trial_id}).scalar()
        if state is None:
            raise KeyError(models.NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, state)
        _upsert_attrs(conn, model_cls.__table__, trial_id, {key: value})

    # -- fewer reads: skip a re-read when nobody has committed since -----------------------------
    def _data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on a private connection of this process: it changes
        whenever any other connection (our own SQLAlchemy one included) commits."""
        if self._version_pid != os.getpid() or self._version_conn is None:
            self._version_conn = sqlite3.connect(self.db_path, timeout=self.policy.busy_timeout,
                                                 check_same_thread=False, isolation_level=None)
            self._version_pid = os.getpid()
        return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        # Optuna's cached storage re-reads every unfinished trial and every newer one (6 queries)
        # on each get_all_trials, several times per trial. Its cache already holds the database
        # as of its last read; if no connection (ours included) has committed since, nothing
        # can have changed, so "nothing new" is the exact answer, without a query.
        # (SQLite only: a server has no data_version; there every read queries.)
        version = self._retry(self._data_version) if self.is_sqlite else None
        # Only the cache's incremental reads (trial_id_greater_than >= 0) may skip or set it;
        # a full read (get_all_trials) always queries.
        incremental = self.is_sqlite and states is None and trial_id_greater_than >= 0
        if incremental and self._last_read == (study_id, version):
            self.reads_skipped += 1
            return []
        included = [t for t in included_trial_ids if t <= trial_id_greater_than]
        if len(included) > 500:  # beyond a sane IN list: Optuna's own (ORM) read
            trials = self._retry(
                lambda: RDBStorage._get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than)
            )
        else:
            binds = {"sid": study_id, "ids": included, "gt": trial_id_greater_than}
            trials = self._retry(lambda: self._fast_read(study_id, False, states, binds))
        if incremental and version is not None:
            self._last_read = (study_id, version)  # read before the query: conservative
        return [self._with_pending(t) for t in trials]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        mirrored = self._mirror().get(trial_id)
        if mirrored is not None:
            return copy.deepcopy(mirrored)
        trials = self._retry(lambda: self._fast_read(None, True, None, {"tid": trial_id}))
        if not trials:
            raise KeyError(models.NOT_FOUND_MSG)
        return self._with_pending(trials[0])

    def _fast_read(
        self, study_id: int | None, by_id: bool, states: Container[TrialState] | None, binds: dict[str, Any]
    ) -> list[FrozenTrial]:
        """What Optuna's ORM read returns, from Core statements (about 5x less CPU)."""
        with _create_scoped_session(self.scoped_session) as session:
            conn = session.connection()
            if study_id is not None and conn.execute(_STUDY_EXISTS, {"sid": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)  # as Optuna's read does for a missing study
            return _read_trials(conn, by_id, states, binds)

    def _mirror(self) -> dict[int, FrozenTrial]:
        """Trials this process created and runs, as written so far (buffered writes included).

        Optuna reads a running trial back several times (``Trial()``, ``tell``, lazy system
        attrs); nothing but this process writes it until it finishes (other processes only fail
        trials whose owner is dead), so these reads are answered here, without a query.
        """
        mirror: dict[int, FrozenTrial] | None = self.__dict__.get("_mirror_trials")
        if mirror is None:
            mirror = self.__dict__["_mirror_trials"] = {}
        return mirror

    def _with_pending(self, trial: FrozenTrial) -> FrozenTrial:
        """A trial of ours as this process sees it: its buffered writes included."""
        pending = self._pending.get(trial._trial_id)
        attrs = self._pending_attrs.get(trial._trial_id)
        if pending is None and not attrs:
            return trial
        if pending is not None:
            for name, value, dist, _ in pending.params:
                trial.distributions[name] = dist
                trial.params[name] = dist.to_external_repr(value)
            trial.system_attrs.update(pending.system_attrs)
        if attrs:
            trial.user_attrs.update(attrs)
        return trial

    # -- fewer write transactions per trial ------------------------------------------------------
    # A trial this process created writes its params, sampler system attrs and user attrs in one
    # transaction (flush_trial, just before its training starts, so other workers' samplers see a
    # running trial's params), and what comes later with its final state: instead of one write
    # transaction per parameter and attribute. Reads in this process include the buffered writes.
    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float,
        distribution: optuna_distributions.BaseDistribution,
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float,
        distribution: optuna_distributions.BaseDistribution,
        previous_distribution: optuna_distributions.BaseDistribution | None,
    ) -> None:
        if trial_id not in self.created_trial_ids:
            self._retry(lambda: RDBStorage._set_trial_param(
                self, trial_id, param_name, param_value_internal, distribution, previous_distribution
            ), write=True)
            return
        if previous_distribution is None:  # Optuna's check, at suggest time (again at flush)
            found = self._retry(lambda: self._first_distribution(trial_id, param_name))
            if found is not None:
                optuna_distributions.check_distribution_compatibility(found, distribution)
        else:
            optuna_distributions.check_distribution_compatibility(previous_distribution, distribution)
        pending = self._pending.setdefault(trial_id, _PendingWrites([], {}))
        pending.params.append((param_name, param_value_internal, distribution, previous_distribution))
        mirrored = self._mirror().get(trial_id)
        if mirrored is not None:
            mirrored.distributions[param_name] = distribution
            mirrored.params[param_name] = distribution.to_external_repr(param_value_internal)

    def _first_distribution(self, trial_id: int, param_name: str) -> Any:
        """The distribution the study first stored for ``param_name`` (Optuna checks against it)."""
        with _create_scoped_session(self.scoped_session) as session:
            study_id = session.query(models.TrialModel.study_id).filter(
                models.TrialModel.trial_id == trial_id).scalar()
            record = (
                session.query(models.TrialParamModel.distribution_json)
                .join(models.TrialModel)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialParamModel.param_name == param_name)
                .first()
            )
        return None if record is None else _distribution(record[0])

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id in self.created_trial_ids and key != OWNER_KEY:
            self._pending.setdefault(trial_id, _PendingWrites([], {})).system_attrs[key] = value
            if trial_id in self._mirror():
                self._mirror()[trial_id].system_attrs[key] = value
            return
        self._retry(lambda: RDBStorage.set_trial_system_attr(self, trial_id, key, value), write=True)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """User attrs of a trial this process runs are written with its final state (one
        transaction instead of one each); anything else is written at once."""
        if trial_id in self.created_trial_ids:
            self._pending_attrs.setdefault(trial_id, {})[key] = value
            if trial_id in self._mirror():
                self._mirror()[trial_id].user_attrs[key] = value
            return
        self._retry(lambda: RDBStorage.set_trial_user_attr(self, trial_id, key, value), write=True)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._retry(lambda: RDBStorage.set_trial_intermediate_value(self, trial_id, step, intermediate_value),
                    write=True)
        if trial_id in self._mirror():
            self._mirror()[trial_id].intermediate_values[step] = intermediate_value

    def _write_pending_without_commit(self, session: Any, trial_id: int, pending: _PendingWrites | None,
                                      attrs: dict[str, Any] | None) -> None:
        """Buffered params and attrs of ``trial_id`` into ``session``: the rows Optuna would write
        (same checks), with one statement per table instead of ORM objects per row."""
        conn = session.connection()
        state = conn.execute(_TRIAL_STATE, {"tid": trial_id}).scalar()
        if state is None:
            raise KeyError(models.NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, state)
        if pending is not None and pending.params:
            rows = []
            for name, value, dist, previous in pending.params:
                if previous is None:  # first use of the name here: Optuna's check, in this transaction
                    found = session.query(models.TrialParamModel.distribution_json).join(models.TrialModel).filter(
                        models.TrialModel.study_id == select(_T.c.study_id).where(_T.c.trial_id == trial_id)
                        .scalar_subquery(),
                        models.TrialParamModel.param_name == name,
                    ).first()
                    if found is not None:
                        optuna_distributions.check_distribution_compatibility(_distribution(found[0]), dist)
                rows.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                             "distribution_json": optuna_distributions.distribution_to_json(dist)})
            conn.execute(_P.insert(), rows)
        for table, items in ((_SA, pending.system_attrs if pending else None), (_UA, attrs)):
            if items:
                _upsert_attrs(conn, table, trial_id, items)

    def flush_trial(self, trial_id: int) -> None:
        """Write the buffered params and attrs of a running trial of ours in one transaction."""
        pending = self._pending.pop(trial_id, None)
        attrs = self._pending_attrs.pop(trial_id, None)
        if pending is None and not attrs:
            return

        def call() -> None:
            with _create_scoped_session(self.scoped_session, True) as session:
                self._write_pending_without_commit(session, trial_id, pending, attrs)

        self._retry(call, write=True)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        finished = state.is_finished()
        pending = self._pending.get(trial_id) if finished else None
        attrs = self._pending_attrs.get(trial_id) if finished else None

        def call() -> bool:
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    if pending is not None or attrs:
                        self._write_pending_without_commit(session, trial_id, pending, attrs)
                    return self._set_state_without_commit(session, trial_id, state, values)
            except sqlalchemy_exc.IntegrityError:  # as Optuna's: a concurrent update won
                return False

        try:
            return self._retry(call, write=True, after_lost_commit=lambda: self._holds_state(trial_id, state))
        finally:
            if finished:
                self._pending.pop(trial_id, None)
                self._pending_attrs.pop(trial_id, None)
                self._mirror().pop(trial_id, None)
                self.created_trial_ids.discard(trial_id)

    def _holds_state(self, trial_id: int, state: TrialState) -> bool | None:
        """True when the trial already has ``state`` (our lost commit went through), else None."""
        return True if RDBStorage.get_trial(self, trial_id).state == state else None

    # -- heartbeats (servers) -------------------------------------------------------------------
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna calls this before each trial when heartbeats are on and fails what it returns,
        without a reason. We fail the stale trials here, with a reason, and return none."""
        reap_stale(self, study_id)
        return []

    def stale_trials(self, study_id: int) -> list[int]:
        """RUNNING trials whose last heartbeat is older than the grace period (servers only)."""
        if self.heartbeat_interval is None:
            return []
        return list(self._retry(lambda: RDBStorage._get_stale_trial_ids(self, study_id)))

    def _set_state_without_commit(
        self, session: Any, trial_id: int, state: TrialState, values: Sequence[float] | None
    ) -> bool:
        """Optuna's ``RDBStorage.set_trial_state_values`` (same checks, same rows) in Core."""
        conn = session.connection()
        current = conn.execute(_TRIAL_STATE_FOR_UPDATE, {"tid": trial_id}).scalar()
        if current is None:
            raise KeyError(models.NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, current)
        if values is not None and len(values) > 0:
            conn.execute(_V.delete().where(_V.c.trial_id == trial_id, _V.c.objective.in_(range(len(values)))))
            rows = []
            for objective, v in enumerate(values):
                stored, kind = models.TrialValueModel.value_to_stored_repr(v)
                rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
            conn.execute(_V.insert(), rows)
        if state == TrialState.RUNNING and current != TrialState.WAITING:
            return False
        now = datetime.datetime.now().astimezone(datetime.timezone.utc).replace(tzinfo=None)
        update: dict[str, Any] = {"state": state}
        if state == TrialState.RUNNING:
            update["datetime_start"] = now
        if state.is_finished():
            update["datetime_complete"] = now
        conn.execute(_T.update().where(_T.c.trial_id == trial_id).values(**update))
        return True

    # -- queries for the launcher --------------------------------------------------------------
    def add_budget_index(self) -> None:
        """Index ``trials(study_id, state)``: the budget count runs inside the write lock on
        every trial creation. An extra index is invisible to Optuna and optuna-dashboard."""
        self._retry(lambda: self._execute_ddl(
            "CREATE INDEX IF NOT EXISTS ix_hparam_joblib_trials_study_state ON trials (study_id, state)"
        ), write=True, setup=True)

    def _execute_ddl(self, sql: str) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql)

    def count_states(self, study_id: int) -> dict[str, int]:
        """``{state name: count}`` for the study, in one cheap query."""

        def query() -> dict[str, int]:
            with _create_scoped_session(self.scoped_session) as session:
                rows = (
                    session.query(models.TrialModel.state, func.count(models.TrialModel.trial_id))
                    .filter(models.TrialModel.study_id == study_id)
                    .group_by(models.TrialModel.state)
                    .all()
                )
            return {state.name: int(n) for state, n in rows}

        return self._retry(query)

    def running_owners(self, study_id: int) -> list[tuple[int, int, dict[str, Any]]]:
        """``(trial_id, number, owner)`` of every RUNNING trial of the study."""

        def query() -> list[tuple[int, int, dict[str, Any]]]:
            with _create_scoped_session(self.scoped_session) as session:
                rows = (
                    session.query(
                        models.TrialModel.trial_id,
                        models.TrialModel.number,
                        models.TrialSystemAttributeModel.value_json,
                    )
                    .outerjoin(
                        models.TrialSystemAttributeModel,
                        (models.TrialSystemAttributeModel.trial_id == models.TrialModel.trial_id)
                        & (models.TrialSystemAttributeModel.key == OWNER_KEY),
                    )
                    .filter(models.TrialModel.study_id == study_id)
                    .filter(models.TrialModel.state == TrialState.RUNNING)
                    .all()
                )
            return [(int(t), int(n), json.loads(v) if v else {}) for t, n, v in rows]

        return self._retry(query)

    def failure_attrs(self, study_id: int, keys: Sequence[str]) -> list[tuple[int, str, dict[str, Any]]]:
        """``(number, state name, {key: value})`` of every PRUNED or FAIL trial, only the user
        attrs ``keys`` (what ``_failures`` needs to tell an error from a pruner decision)."""
        stmt = (
            select(_T.c.number, _T.c.state, _UA.c.key, _UA.c.value_json)
            .select_from(_T.outerjoin(_UA, (_UA.c.trial_id == _T.c.trial_id) & _UA.c.key.in_(list(keys))))
            .where(_T.c.study_id == study_id, _T.c.state.in_([TrialState.PRUNED, TrialState.FAIL]))
        )

        def query() -> list[tuple[int, str, dict[str, Any]]]:
            out: dict[int, tuple[str, dict[str, Any]]] = {}
            with self.engine.connect() as conn:
                for number, state, key, text in conn.execute(stmt):
                    name = state.name if isinstance(state, TrialState) else str(state)
                    entry = out.setdefault(int(number), (name, {}))
                    if key is not None:
                        entry[1][key] = json.loads(text)
            return [(n, state, attrs) for n, (state, attrs) in out.items()]

        return self._retry(query)


def _wrap(name: str) -> Callable[..., Any]:
    base = getattr(RDBStorage, name)
    write = name.lstrip("_").startswith(("set_", "create_", "delete_", "record_"))

    @functools.wraps(base)
    def method(self: SearchStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: base(self, *args, **kwargs), write=write)

    return method


for _name in _RETRIED_METHODS:
    if hasattr(RDBStorage, _name) and _name not in SearchStorage.__dict__:
        setattr(SearchStorage, _name, _wrap(_name))


class StudyStore(Protocol):
    """What the launcher, workers and progress bar use of a storage (RDB or journal)."""

    location: StorageLocation
    db_path: str
    budget: int | None
    family: int | None
    lock_retries: int
    op_seconds: list[float]
    created_trial_ids: set[int]

    @property
    def lock_wait_seconds(self) -> float: ...
    def count_states(self, study_id: int) -> dict[str, int]: ...
    def running_owners(self, study_id: int) -> list[tuple[int, int, dict[str, Any]]]: ...
    def stale_trials(self, study_id: int) -> list[int]: ...
    def add_budget_index(self) -> None: ...
    def get_trial(self, trial_id: int) -> FrozenTrial: ...
    def get_best_trial(self, study_id: int) -> FrozenTrial: ...
    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]: ...
    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]: ...
    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None: ...
    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]: ...
    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None: ...
    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None: ...
    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None: ...
    def flush_trial(self, trial_id: int) -> None: ...
    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool: ...


def fail_trial(storage: StudyStore, trial_id: int, reason: str, kind: str = "worker_died") -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and ``failure_kind`` (``worker_died`` or
    ``interrupted``, see ``_failures``); False if it had already finished."""
    try:
        storage.set_trial_user_attr(trial_id, "failure_reason", reason)
        storage.set_trial_user_attr(trial_id, "failure_kind", kind)
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def reap_stale(storage: StudyStore, study_id: int) -> list[int]:
    """Fail RUNNING trials whose heartbeat went silent (a machine or process that died
    elsewhere); servers with heartbeats only. Returns the numbers of the trials failed."""
    stale = storage.stale_trials(study_id)
    if not stale:
        return []
    owners = {trial_id: (number, owner) for trial_id, number, owner in storage.running_owners(study_id)}
    reaped: list[int] = []
    grace = getattr(storage, "grace_period", None)
    for trial_id in stale:
        if trial_id not in owners:
            continue
        number, owner = owners[trial_id]
        who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "its process"
        why = f"no heartbeat for over {grace:g} s from {who} (its machine or process died); it will be re-run"
        if fail_trial(storage, trial_id, why):
            reaped.append(number)
            logger.warning("trial %d: %s", number, why)
    return reaped


def reap_dead_owners(
    storage: StudyStore, study_id: int, dead_pids: set[int] | None = None, reason: str = ""
) -> list[int]:
    """Fail RUNNING trials whose owner process is gone (or is in ``dead_pids``), and, on a
    server, trials whose heartbeat went silent.

    Returns:
        The numbers of the trials marked FAIL; they no longer count against the budget.
    """
    reaped: list[int] = []
    for trial_id, number, owner in storage.running_owners(study_id):
        if not owner:
            continue
        ours_and_dead = dead_pids is not None and owner.get("pid") in dead_pids and (
            owner.get("host") == socket.gethostname()
        )
        if ours_and_dead or owner_is_dead(owner):
            why = reason or f"its process (pid {owner.get('pid')}) died while the trial ran"
            if fail_trial(storage, trial_id, why):
                reaped.append(number)
    return reaped + reap_stale(storage, study_id)


def preflight(db_path: Path, study_name: str, direction: str | Sequence[str]) -> bool:
    """Check the save directory and an existing database without changing anything.

    Returns:
        True when the study already exists in the file (a resume).

    Raises:
        StorageError: unwritable directory, a file that is not SQLite, an unreadable database,
            or a stored direction that differs from the config.
    """
    directory = db_path.parent
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(str(directory), f"{probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(str(directory), f"save directory is not writable ({probe})")
    if not db_path.exists():
        return False
    if db_path.is_dir():
        raise StorageError(str(db_path), "is a directory, not a database file")
    if not os.access(db_path, os.R_OK | os.W_OK):
        raise StorageError(str(db_path), "database file is not readable and writable")
    with open(db_path, "rb") as handle:
        head = handle.read(16)
    if not head:
        return False
    if head != SQLITE_MAGIC:
        raise StorageError(str(db_path), "exists but is not a SQLite database; move it or pick another tag")
    try:
        # Without a -wal file the database is fully checkpointed: open it immutable so that not
        # even -wal/-shm side files appear (bad input must leave the disk as it was).
        has_wal = Path(f"{db_path}-wal").exists()
        uri = f"file:{db_path}?mode=ro" + ("" if has_wal else "&immutable=1")
        conn = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "studies" not in tables:
                return False
            rows = conn.execute(
                "SELECT d.direction FROM studies s JOIN study_directions d ON d.study_id = s.study_id "
                "WHERE s.study_name = ? ORDER BY d.objective",
                (study_name,),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise StorageError(str(db_path), f"cannot read the database ({err})") from err
    if not rows:
        return False
    expected = [direction] if isinstance(direction, str) else list(direction)
    check_directions(str(db_path), study_name, [str(r[0]).lower() for r in rows], expected)
    return True


def check_directions(where: str, study_name: str, stored: Sequence[str], expected: Sequence[str]) -> None:
    """Refuse a config whose directions differ from the stored study's (one line, names ``where``).

    Raises:
        StorageError: the directions differ.
    """
    if list(stored) == list(expected):
        return

    def shown(dirs: Sequence[str]) -> str:
        return f"direction {dirs[0]!r}" if len(dirs) == 1 else f"directions {list(dirs)}"

    raise StorageError(
        where,
        f"study {study_name!r} was created with {shown(stored)}, "
        f"but the config says {shown(expected)}; use another tag for a new study",
    )

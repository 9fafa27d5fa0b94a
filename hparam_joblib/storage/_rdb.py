"""Optuna's ``RDBStorage`` on one SQLite file or a PostgreSQL database (:class:`SearchStorage`):
the exact budget and the owner in the transaction that creates a trial, buffered writes,
retries, and (on a server) heartbeats whose stale trials Optuna fails and calls back on.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna import distributions as optuna_distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb import storage as _rdb_storage
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import bindparam, event, func, select, text
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import inspect as sqlalchemy_inspect

from hparam_joblib._errors import StorageBusyError, StorageError
from hparam_joblib._keys import FAILURE_REASON_KEY, OWNER_KEY
from hparam_joblib.storage._base import BUDGET_STATES, BudgetExhausted, T
from hparam_joblib.storage._fast_path import (
    _P,
    _PAST_TRIALS,
    _SA,
    _STUDY_EXISTS,
    _T,
    _TRIAL_STATE,
    _TRIAL_STATE_FOR_UPDATE,
    _UA,
    _V,
    _distribution,
    _PendingWrites,
    _read_trials,
    _upsert_attrs,
)
from hparam_joblib.storage._location import StorageLocation, sqlite_url
from hparam_joblib.storage._owners import describe_holders, owner_record, stale_with_reasons
from hparam_joblib.storage._postgresql import _RECONNECT_FILTER, connect_args, driver_url
from hparam_joblib.storage._retry import RetryPolicy, _is_setup_race, is_lock_error, server_transient
from hparam_joblib.storage._sqlite import _connect, _WriteLock

logger = logging.getLogger("hparam_joblib")


_RETRIED_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_all_trials", "get_n_trials", "get_best_trial", "record_heartbeat",
    # Optuna's _CachedStorage calls this private method of its backend directly.
    "_get_best_trial_id",
)


_STUDY_FOR_UPDATE = _STUDY_EXISTS.with_for_update()
_BUDGET_TAKEN = select(func.count(_T.c.trial_id)).where(
    _T.c.study_id == bindparam("sid"), _T.c.state.in_(list(BUDGET_STATES))
)

_HAS_WAITING = (
    select(_T.c.trial_id).where(_T.c.study_id == bindparam("sid"), _T.c.state == TrialState.WAITING).limit(1)
)

_REAL_VERSION_MANAGER = _rdb_storage._VersionManager
_VERSION_MANAGER_SWAP = threading.Lock()


class _LazyVersionManager:
    """Optuna's ``_VersionManager``, built on the first use of any of its attributes.

    Its constructor imports alembic and reads the version tables; a storage opened with
    ``skip_table_creation`` and ``skip_compatibility_check`` on a schema that exists (a worker's)
    only needs it for ``upgrade()`` / ``get_current_version()``, which build it then.
    """

    def __init__(self, url: str, engine: Any, scoped_session: Any) -> None:
        self._args = (url, engine, scoped_session)
        self._real: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            self._real = _REAL_VERSION_MANAGER(*self._args)
        return getattr(self._real, name)


class _CheckedVersionManager(_LazyVersionManager):
    """The launcher's: a schema already stamped with this Optuna's head revision passes the
    compatibility check with two plain reads (no alembic: 0.17 s off every launch's critical
    path); a schema just created is stamped the same way alembic's ``stamp`` would (one table, one
    row). Anything else (an old schema, an unexpected layout) builds Optuna's own manager at once,
    which stamps, or raises its message naming ``optuna storage upgrade``."""

    def __init__(self, url: str, engine: Any, scoped_session: Any) -> None:
        super().__init__(url, engine, scoped_session)
        if not (_stamped_head(engine) or _stamp_new_schema(engine)):
            self._real = _REAL_VERSION_MANAGER(*self._args)

    def check_table_schema_compatibility(self) -> None:
        if self._real is None:
            return  # stamped with the head revision: what Optuna's check compares
        self._real.check_table_schema_compatibility()


_HEAD: list[str | None] = []


def _alembic_head() -> str | None:
    """The head revision of Optuna's migrations, read from its version scripts' ``revision`` /
    ``down_revision`` lines (what alembic's ScriptDirectory computes), or None if unclear."""
    if not _HEAD:
        import re

        versions = Path(_rdb_storage.__file__).parent / "alembic" / "versions"
        revisions: set[str] = set()
        downs: set[str] = set()
        try:
            for script in versions.glob("*.py"):
                source = script.read_text(encoding="utf-8")
                rev = re.search(r'^revision\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
                down = re.search(r'^down_revision\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
                if rev:
                    revisions.add(rev.group(1))
                if down:
                    downs.add(down.group(1))
        except OSError:
            revisions = set()
        heads = revisions - downs
        _HEAD.append(heads.pop() if len(heads) == 1 else None)
    return _HEAD[0]


def _stamped_head(engine: Any) -> str | None:
    """The schema's alembic revision when it is this Optuna's head and the version row exists."""
    head = _alembic_head()
    if head is None:
        return None
    try:
        with engine.connect() as conn:
            current = [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]
            info = conn.execute(text("SELECT COUNT(*) FROM version_info")).scalar()
    except sqlalchemy_exc.SQLAlchemyError:
        return None  # no such table yet (a new file): Optuna's manager creates and stamps
    return head if current == [head] and info else None


def _stamp_new_schema(engine: Any) -> bool:
    """Write the version rows of a schema that ``create_all`` just made (no version row, no
    ``alembic_version`` table), as Optuna's manager does: ``version_info`` with this Optuna's
    schema and library version, and ``alembic_version`` at the head revision (alembic's own
    table layout). False, touching nothing, for any other state."""
    head = _alembic_head()
    if head is None:
        return False
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT COUNT(*) FROM version_info")).scalar():
                return False
            if "alembic_version" in sqlalchemy_inspect(conn).get_table_names():
                return False
            conn.execute(
                text("INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, :s, :v)"),
                {"s": models.SCHEMA_VERSION, "v": optuna.__version__},
            )
            conn.execute(text(
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            ))
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:h)"), {"h": head})
    except sqlalchemy_exc.SQLAlchemyError as err:  # a concurrent creator won, or a layout we do not know
        logger.debug("version rows not written here (%s); Optuna's manager checks the schema", err)
        return False
    return True


def _with_version_manager(init: Callable[[], None], manager: type[_LazyVersionManager]) -> None:
    """Run ``init`` (``RDBStorage.__init__``) with ``manager`` in place of Optuna's
    ``_VersionManager`` (a module global it looks up; swapped under a lock and always restored)."""
    with _VERSION_MANAGER_SWAP:
        _rdb_storage._VersionManager = manager  # type: ignore[misc,assignment]
        try:
            init()
        finally:
            _rdb_storage._VersionManager = _REAL_VERSION_MANAGER  # type: ignore[misc]


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
        grace_period: seconds of silence after which a trial is stale (default 3 intervals).
        heartbeat_stale_trial_callback: Optuna's callback run on each stale trial it fails.
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
        grace_period: float | None = None,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
        if grace_period is not None and grace_period <= 0:
            raise ValueError(f"grace_period must be > 0 seconds, got {grace_period!r}")
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
        def init() -> None:
            RDBStorage.__init__(
                self,
                url,
                engine_kwargs=engine_kwargs,
                skip_table_creation=not create_tables,
                skip_compatibility_check=not create_tables,
            )

        # A worker opens a schema the launcher created and checked: Optuna's version manager
        # (which imports alembic, 0.15 s per process, and reads two tables) is built only if used.
        # The launcher's checks a schema at this Optuna's head with two plain reads.
        try:
            self._retry(
                lambda: _with_version_manager(init, _CheckedVersionManager if create_tables else _LazyVersionManager),
                write=create_tables,  # workers only open the file: no need to queue as writers
                setup=create_tables,
            )
        except BaseException:  # e.g. a schema of an older Optuna: release the file before raising
            if getattr(self, "engine", None) is not None:
                self.engine.dispose()
            raise
        if heartbeat_interval is not None and not self.is_sqlite:
            # Set after construction: Optuna's constructor wants whole seconds and warns.
            self.heartbeat_interval = heartbeat_interval  # type: ignore[assignment]
            # Our default: silent for 3 intervals (Optuna's own is 2).
            self.grace_period = grace_period or 3 * heartbeat_interval  # type: ignore[assignment]
            self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        if self.is_sqlite:
            event.listen(self.engine, "begin", self._on_begin)
        else:
            rdb_logger = logging.getLogger("optuna.storages._rdb.storage")
            if _RECONNECT_FILTER not in rdb_logger.filters:
                rdb_logger.addFilter(_RECONNECT_FILTER)
        self._pending_attrs: dict[int, dict[str, Any]] = {}
        self._pending: dict[int, _PendingWrites] = {}  # params and system attrs of our trials
        self._study_of: dict[int, int] = {}  # trial id -> study id, for the trials we created
        self._version_conn: sqlite3.Connection | None = None
        self._version_pid = -1
        self._last_read: tuple[tuple[Any, ...], list[FrozenTrial]] | None = None
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
        try:
            if locked:
                # Inside the try: a Ctrl-C (KeyboardInterrupt) raised just after flock() returned
                # must not leave the lock held for the life of this process (a notebook kernel:
                # the next search would wait on it forever). Releasing a lock not taken is a no-op.
                assert self._write_lock is not None
                self._write_lock.acquire()
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
        self._study_of[frozen._trial_id] = study_id
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
            # (Core statements: this runs while the write lock is held, so its Python is short.)
            conn = session.connection()
            if conn.execute(_STUDY_FOR_UPDATE, {"sid": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            if self.budget is not None:
                taken = int(conn.execute(_BUDGET_TAKEN, {"sid": study_id}).scalar() or 0)
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
        # on each get_all_trials, several times per trial. If no connection (ours included) has
        # committed since the same question (study, included ids, id bound) was last answered,
        # the answer is unchanged: it is given again (as copies), without a query. Keyed on the
        # question, not the caller: two studies on one storage each get what a query returns.
        # (SQLite only: a server has no data_version; there every read queries.)
        version = self._retry(self._data_version) if self.is_sqlite else None
        included = sorted(t for t in included_trial_ids if t <= trial_id_greater_than)
        key = (study_id, version, tuple(included), trial_id_greater_than)
        incremental = self.is_sqlite and states is None and trial_id_greater_than >= 0
        if incremental and self._last_read is not None and self._last_read[0] == key:
            return [self._pending_view(t) for t in self._last_read[1]]
        if len(included) > 500:  # beyond a sane IN list: Optuna's own (ORM) read
            trials = self._retry(
                lambda: RDBStorage._get_trials(self, study_id, states, included_trial_ids, trial_id_greater_than)
            )
        else:
            binds = {"sid": study_id, "ids": included, "gt": trial_id_greater_than}
            trials = self._retry(lambda: self._fast_read(study_id, False, states, binds))
        if incremental and version is not None:
            # data_version was read before the query: a commit in between only causes a re-read.
            # Kept as read and given again as the same objects: Optuna's cache replaces the
            # trials it holds, it never edits them (a deep copy of every unfinished trial on each
            # answer cost a third of a worker's CPU at n_jobs=32).
            self._last_read = (key, trials)
        return [self._pending_view(t) for t in trials]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        mirrored = self._mirror().get(trial_id)
        if mirrored is not None:
            return copy.deepcopy(mirrored)
        trials = self._retry(lambda: self._fast_read(None, True, None, {"tid": trial_id}))
        if not trials:
            raise KeyError(models.NOT_FOUND_MSG)
        return self._with_pending(trials[0])

    # Reads of one trial's params or attrs: a trial of ours may hold buffered writes, so those
    # are answered from get_trial (mirror or database, buffered writes merged).
    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        if trial_id in self.created_trial_ids:
            trial = self.get_trial(trial_id)
            if param_name not in trial.distributions:
                raise KeyError(models.NOT_FOUND_MSG)
            return float(trial.distributions[param_name].to_internal_repr(trial.params[param_name]))
        return self._retry(lambda: RDBStorage.get_trial_param(self, trial_id, param_name))

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        if trial_id in self.created_trial_ids:
            return self.get_trial(trial_id).params
        return self._retry(lambda: RDBStorage.get_trial_params(self, trial_id))

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        if trial_id in self.created_trial_ids:
            return self.get_trial(trial_id).user_attrs
        return self._retry(lambda: RDBStorage.get_trial_user_attrs(self, trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        if trial_id in self.created_trial_ids:
            return self.get_trial(trial_id).system_attrs
        return self._retry(lambda: RDBStorage.get_trial_system_attrs(self, trial_id))

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

    def _pending_view(self, trial: FrozenTrial) -> FrozenTrial:
        """``trial`` itself, or a copy with this process's buffered writes when it has some (only
        this process's own running trial): the trial read stays as read."""
        if trial._trial_id not in self._pending and not self._pending_attrs.get(trial._trial_id):
            return trial
        return self._with_pending(copy.deepcopy(trial))

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
            found = self._buffered_distribution(trial_id, param_name)
            if found is None:
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

    def _buffered_distribution(self, trial_id: int, param_name: str) -> Any:
        """The distribution of ``param_name`` in a buffered (not yet written) param of another
        running trial of ours in the same study, or None."""
        study_id = self._study_of.get(trial_id)
        for other, pending in self._pending.items():
            if other != trial_id and self._study_of.get(other) == study_id:
                for name, _value, dist, _previous in pending.params:
                    if name == param_name:
                        return dist
        return None

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

    def close(self) -> None:
        """Close this process's connections to the database (the pool, the data_version one, the
        writers' lock file). A search's launcher and workers call it when they are done: a
        notebook kernel or a reused loky worker otherwise keeps them open until the garbage
        collector finds them, and open connections are what a careless read of the file in the
        same process (a plain ``open()``/``close()``) would strip of their locks."""
        self.engine.dispose()
        if self._version_conn is not None and self._version_pid == os.getpid():
            self._version_conn.close()
        self._version_conn, self._version_pid = None, -1
        if self._write_lock is not None:
            self._write_lock.close()

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
                self._study_of.pop(trial_id, None)

    def _holds_state(self, trial_id: int, state: TrialState) -> bool | None:
        """True when the trial already has ``state`` (our lost commit went through), else None."""
        return True if RDBStorage.get_trial(self, trial_id).state == state else None

    # -- heartbeats (servers) -------------------------------------------------------------------
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna calls this before each trial when heartbeats are on, fails what it returns and
        runs the storage's ``heartbeat_stale_trial_callback`` on each. The reason goes on the
        trial first, so that the FAIL carries it."""
        ids = []
        for trial_id, number, why in stale_with_reasons(self, study_id):
            try:
                self.set_trial_user_attr(trial_id, FAILURE_REASON_KEY, why)
            except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
                continue  # finished meanwhile
            logger.warning("trial %d: %s", number, why)
            ids.append(trial_id)
        return ids

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

    def update_study_user_attr(self, study_id: int, key: str, update: Callable[[Any], Any]) -> None:
        """Set a study user attr to ``update(its value or None)`` in one write transaction: no
        other writer comes between the read and the write (the run history of launches that
        start at once). SQLite: the writers' lock and ``BEGIN IMMEDIATE``; a server: the study's
        row locked ``FOR UPDATE`` first, as trial creation does."""
        table = models.StudyUserAttributeModel.__table__

        def once() -> None:
            with self.engine.begin() as conn:
                if conn.execute(_STUDY_FOR_UPDATE, {"sid": study_id}).first() is None:
                    raise KeyError(models.NOT_FOUND_MSG)
                where = (table.c.study_id == study_id, table.c.key == key)
                row = conn.execute(select(table.c.value_json).where(*where)).first()
                value = update(None if row is None else json.loads(row[0]))
                conn.execute(table.delete().where(*where))
                conn.execute(table.insert(), [{"study_id": study_id, "key": key, "value_json": json.dumps(value)}])

        self._retry(once, write=True)

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

    def has_waiting(self, study_id: int) -> bool:
        """Does the study hold a WAITING (enqueued) trial? One lookup in the (study, state) index."""

        def query() -> bool:
            with self.engine.connect() as conn:
                return conn.execute(_HAS_WAITING, {"sid": study_id}).first() is not None

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



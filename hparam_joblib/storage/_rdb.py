"""Optuna's ``RDBStorage`` on one SQLite file or a PostgreSQL database (:class:`SearchStorage`):
the exact budget and the owner in the transaction that creates a trial, buffered writes,
retries, and (on a server) heartbeats whose stale trials Optuna fails and calls back on.

:class:`SearchStorage` is composed of one part per job, each in its own module:

* ``_retrying``: :class:`Retrying`, the base of every part: each call retried (SQLite locks,
  server deadlocks and lost connections), the writers' lock, ``BEGIN IMMEDIATE`` for writes;
* ``_schema``: Optuna's version manager built only when used, a new schema stamped without alembic;
* ``_creation``: :class:`BudgetedCreation`, the budget and the owner in the creating transaction;
* ``_core_writes`` / ``_buffer``: Optuna's trial writes in Core; a running trial's writes
  buffered (:class:`WriteBuffer`) and sent in one transaction;
* ``_cache``: :class:`CachedReads`, reads in Core, skipped when nobody has committed since;
* ``_queries``: :class:`LauncherQueries`, what the launcher asks beyond Optuna's API.

This module holds the constructor, the heartbeat-stale trials, and Optuna's other methods, each
retried.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event, func, text

from hparam_joblib._keys import FAILURE_REASON_KEY
from hparam_joblib.storage._buffer import BufferedWrites, WriteBuffer
from hparam_joblib.storage._cache import CachedReads
from hparam_joblib.storage._creation import BudgetedCreation
from hparam_joblib.storage._location import StorageLocation, sqlite_url
from hparam_joblib.storage._owners import stale_with_reasons
from hparam_joblib.storage._postgresql import _RECONNECT_FILTER, connect_args, driver_url, ping_when_idle
from hparam_joblib.storage._queries import LauncherQueries
from hparam_joblib.storage._retry import RetryPolicy
from hparam_joblib.storage._schema import CheckedVersionManager, LazyVersionManager, with_version_manager
from hparam_joblib.storage._sqlite import _connect, _WriteLock

if TYPE_CHECKING:
    from optuna.study import StudyDirection

logger = logging.getLogger("hparam_joblib")

_HB = models.TrialHeartbeatModel.__table__

#: RUNNING trials whose heartbeat is older than the grace period, by the server's clock (the
#: heartbeats are its ``now()`` as a local timestamp, as Optuna compares them).
_STALE = text(
    "SELECT t.trial_id FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :sid AND t.state = 'RUNNING' "
    "AND LOCALTIMESTAMP - h.heartbeat > make_interval(secs => :grace) ORDER BY t.trial_id"
)


class SearchStorage(BudgetedCreation, BufferedWrites, CachedReads, LauncherQueries):
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
        self.is_sqlite = location.kind == "sqlite"
        self._init_fields(location, location.path if self.is_sqlite else location.display, budget, run_id, policy)
        self._init_retrying(_WriteLock(self.db_path + ".lock") if self.is_sqlite else None)
        self._init_cache()
        self._buffer = WriteBuffer()
        self._created_beat = {}
        url = sqlite_url(Path(self.db_path)) if self.is_sqlite else driver_url(location.url)
        engine_kwargs: dict[str, Any]
        if self.is_sqlite:
            engine_kwargs = {"creator": functools.partial(_connect, self.db_path, self.policy.busy_timeout)}
        else:
            # No pool_pre_ping (a ping at every checkout): ping_when_idle, below.
            engine_kwargs = {"connect_args": connect_args(url)}

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
                lambda: with_version_manager(init, CheckedVersionManager if create_tables else LazyVersionManager),
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
            # A connection the server dropped while a long trial ran is replaced before use.
            ping_when_idle(self.engine)
            rdb_logger = logging.getLogger("optuna.storages._rdb.storage")
            if _RECONNECT_FILTER not in rdb_logger.filters:
                rdb_logger.addFilter(_RECONNECT_FILTER)

    def __reduce__(self) -> Any:
        raise TypeError("SearchStorage is opened per process from its location; do not pickle it")

    def close(self) -> None:
        """Close this process's connections to the database (the pool, the data_version one, the
        writers' lock file). A search's launcher and workers call it when they are done: a
        notebook kernel or a reused loky worker otherwise keeps them open until the garbage
        collector finds them, and open connections are what a careless read of the file in the
        same process (a plain ``open()``/``close()``) would strip of their locks."""
        self.engine.dispose()
        self._close_cache()
        if self._write_lock is not None:
            self._write_lock.close()

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
        if self.is_sqlite:
            return list(self._retry(lambda: RDBStorage._get_stale_trial_ids(self, study_id)))
        grace = float(self.grace_period or 2 * self.heartbeat_interval)

        def query() -> list[int]:
            # Optuna's test in one statement and one round trip (it reads now(), then every
            # running trial, then their heartbeats, in a transaction): asked before every trial.
            with self._autocommit() as conn:
                return [int(r[0]) for r in conn.execute(_STALE, {"sid": study_id, "grace": grace})]

        return self._retry(query)

    # -- Optuna's other methods, each retried as one call (writes: set_, create_, delete_,
    # record_; tests/unit/test_storage_methods.py checks that none is left to Optuna) ----------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._retry(lambda: RDBStorage.create_new_study(self, directions, study_name), write=True)

    def delete_study(self, study_id: int) -> None:
        self._retry(lambda: RDBStorage.delete_study(self, study_id), write=True)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: RDBStorage.set_study_user_attr(self, study_id, key, value), write=True)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: RDBStorage.set_study_system_attr(self, study_id, key, value), write=True)

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat: the row's time set to the server's ``now()`` in one statement (Optuna's
        reads the row, then ``now()``, then writes). Optuna's heartbeat thread beats as soon as a
        trial starts; a trial this process created less than half an interval ago already has
        that beat (written with it), so that one is skipped: the gap between beats stays under
        1.5 intervals, the grace period is 3."""
        created = self._created_beat.pop(trial_id, None)
        interval = self.heartbeat_interval
        if created is not None and interval is not None and time.monotonic() - created < interval / 2:
            return
        self._retry(lambda: self._beat_once(trial_id), write=True)

    def _beat_once(self, trial_id: int) -> None:
        with self._autocommit() as conn:  # one statement, one round trip
            updated = conn.execute(_HB.update().where(_HB.c.trial_id == trial_id).values(heartbeat=func.now()))
            if updated.rowcount == 0:  # an enqueued trial: created without one (as Optuna's)
                conn.execute(_HB.insert().values(trial_id=trial_id, heartbeat=func.now()))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._retry(lambda: RDBStorage.get_study_id_from_name(self, study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retry(lambda: RDBStorage.get_study_name_from_id(self, study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retry(lambda: RDBStorage.get_study_directions(self, study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: RDBStorage.get_study_user_attrs(self, study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: RDBStorage.get_study_system_attrs(self, study_id))

    def get_all_studies(self) -> list[Any]:  # Optuna's FrozenStudy (not exported publicly)
        return self._retry(lambda: RDBStorage.get_all_studies(self))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry(lambda: RDBStorage.get_trial_id_from_study_id_trial_number(self, study_id, trial_number))

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._retry(lambda: RDBStorage.get_trial_number_from_id(self, trial_id))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._retry(lambda: RDBStorage.get_all_trials(self, study_id, deepcopy, states))

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        return self._retry(lambda: RDBStorage.get_n_trials(self, study_id, state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._retry(lambda: RDBStorage.get_best_trial(self, study_id))

    def _get_best_trial_id(self, study_id: int, direction: StudyDirection) -> int:
        # Optuna's _CachedStorage calls this private method of its backend directly.
        return self._retry(lambda: RDBStorage._get_best_trial_id(self, study_id, direction))

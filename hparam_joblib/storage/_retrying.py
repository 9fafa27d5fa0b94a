"""Every call of :class:`SearchStorage` runs through :meth:`Retrying._retry`: bounded, jittered,
counted retries of SQLite locks and transient server errors, the writers' lock around a write
(SQLite), ``BEGIN IMMEDIATE`` for writes, and a commit whose fate a lost connection left unknown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.storages import RDBStorage

from hparam_joblib._errors import StorageBusyError, StorageError
from hparam_joblib.storage._base import T
from hparam_joblib.storage._fields import StoreFields
from hparam_joblib.storage._owners import describe_holders
from hparam_joblib.storage._retry import _is_setup_race, is_lock_error, server_transient
from hparam_joblib.storage._sqlite import _WriteLock

logger = logging.getLogger("hparam_joblib")


class Retrying(StoreFields, RDBStorage):
    """Optuna's RDBStorage with the retry machinery; the base of every part of SearchStorage.

    Per thread (``_tx``): is a write transaction open (nested calls join it), how deep the calls
    nest (only the outermost one is timed and takes the writers' lock), and did the connection
    break during a commit (``_lost_commit``: the next attempt must first look for what it wrote).
    """

    is_sqlite: bool

    def _init_retrying(self, write_lock: _WriteLock | None) -> None:
        """Set the per-thread state and the writers' lock (SQLite; None on a server)."""
        self._tx = threading.local()
        self._write_lock = write_lock

    def _retry(
        self,
        call: Callable[[], T],
        write: bool = False,
        setup: bool = False,
        after_lost_commit: Callable[[], T | None] | None = None,
    ) -> T:
        """``call()``, retried until it succeeds, fails for good, or ``policy.deadline`` passes."""
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
        """The attempts of :meth:`_retry`, with the pause between them."""
        while True:
            try:
                return call()
            except Exception as err:
                if self._lost_commit() and after_lost_commit is not None and isinstance(
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

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[Any]:
        """A connection whose statements each commit on their own on a server: a lone read (or
        a lone write) costs one round trip instead of BEGIN, the statement and COMMIT or
        ROLLBACK (and psycopg 3 follows a ROLLBACK with DEALLOCATE ALL of its prepared
        statements). SQLite keeps the transaction of our ``begin`` event (``BEGIN IMMEDIATE`` for
        writes), committed when the block ends without error."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
            conn.commit()

    def _lost_commit(self) -> bool:
        """Did the connection break during this call's last commit (its fate is unknown)?"""
        return bool(getattr(self._tx, "lost_commit", False))

    def _reset_session(self) -> None:
        """Roll back and drop this thread's session after an error: a session whose connection
        broke stays unusable (PendingRollbackError) until rolled back, and a half-built write
        (pending attrs added before the failure) must not leak into the next call."""
        with contextlib.suppress(Exception):  # the connection may be gone; remove() still resets
            self.scoped_session.rollback()
        self.scoped_session.remove()

    def _on_begin(self, conn: Any) -> None:
        """SQLite's ``begin`` event: writes take the write lock up front (``BEGIN IMMEDIATE``)."""
        # The budget count and the insert are then atomic, and a busy writer waits in
        # busy_timeout instead of failing with a stale snapshot. Reads stay deferred and never
        # block in WAL mode.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if getattr(self._tx, "write", False) else "BEGIN")

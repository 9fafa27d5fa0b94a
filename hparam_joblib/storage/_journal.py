"""``storage: journal``: Optuna's JournalStorage on an append-only file, with the guarantees of
the SQLite storage: an exact budget, owners recorded with the trial, dead-owner reaping, the
final state written together with the trial's reason.

How:

* **One lock, held by the kernel.** Every append goes through :class:`FlockLock`, an ``flock``
  on ``<journal>.flock``, in place of Optuna's default symlink lock: a process killed while
  holding it (``kill -9``) releases it at once (a symlink lock would be left behind and block
  every writer for its 30 s grace period). The lock is re-entrant within a process, so a
  budget check can hold it across "read the log, count, append".
* **Exact budget**: trial creation takes the lock, replays the log to its end, counts the
  trials that hold a slot (RUNNING, WAITING, COMPLETE, PRUNED) and appends the new trial's
  record before letting go. No record can slip in between, across processes.
* **Owner in the same record**: the new trial is appended as one ``CREATE_TRIAL`` record that
  already carries its owner (a template trial in state RUNNING with the owner system attr).
* **Final state and reason together**: user attrs of a running trial (its config, its failure
  reason) are appended in the same write as its final state, after checking under the lock
  that nobody finished the trial meanwhile.
* **Torn tails**: a writer killed in the middle of a write could leave a line without its
  newline; the next writer cuts it off (under the lock) before appending, so the log stays
  readable by every Optuna reader. A single ``write`` of a record is not torn by ``kill -9``
  on a local file system; this only guards against a full disk and the like.

Readers (``optuna.load_study`` with ``JournalStorage(JournalFileBackend(path))``, the results
CLI, optuna-dashboard) take no lock. Writers that use Optuna's default lock are not
coordinated with ours: do not write to the file from plain Optuna while a search runs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Container, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._errors import StorageBusyError, StorageError, one_line
from hparam_joblib._flock import FileLock
from hparam_joblib._keys import OWNER_KEY
from hparam_joblib.storage._base import BUDGET_STATES, BudgetExhausted
from hparam_joblib.storage._failure_rows import FAILED_STATES, FailureRow, failure_rows
from hparam_joblib.storage._fields import StoreFields
from hparam_joblib.storage._location import StorageLocation, check_directions, check_directory
from hparam_joblib.storage._owners import owner_record
from hparam_joblib.storage._retry import RetryPolicy
from hparam_joblib.storage._sqlite import SQLITE_MAGIC

logger = logging.getLogger("hparam_joblib")

LOCK_SUFFIX = ".flock"


class FlockLock(BaseJournalFileLock):
    """A re-entrant, per-process ``flock`` on ``<journal>.flock`` (see the module docstring).

    Waits at most ``policy.deadline`` seconds, then raises :class:`StorageBusyError`.
    """

    def __init__(self, journal: str, policy: RetryPolicy) -> None:
        self.path = journal + LOCK_SUFFIX
        self.policy = policy
        self._file = FileLock(self.path)
        self._depth = 0
        self._thread = threading.RLock()
        self.waits = 0

    def acquire(self) -> bool:
        self._thread.acquire()
        if self._depth:
            self._depth += 1
            return True
        try:
            self._lock()
        except BaseException:
            # A Ctrl-C raised just after the lock was taken must not leave it held for the life
            # of this process (unlocking a lock not taken is a no-op).
            self._file.release()
            self._thread.release()
            raise
        self._depth = 1
        return True

    def close(self) -> None:
        """Close this process's lock file (held or not: closing it releases the flock)."""
        self._file.close()

    def _lock(self) -> None:
        if self._file.acquire(blocking=False):
            return
        self.waits += 1
        start = time.monotonic()
        pause = 0.0005
        while True:
            time.sleep(pause)
            if self._file.acquire(blocking=False):
                return
            waited = time.monotonic() - start
            if waited >= self.policy.deadline:
                raise StorageBusyError(
                    self.path[: -len(LOCK_SUFFIX)], self.waits,
                    f"another process has held {self.path} for {waited:.0f} s",
                ) from None
            pause = min(pause * 2, 0.02)

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._file.release()
        self._thread.release()


class _Backend(JournalFileBackend):
    """Optuna's file backend with our lock, and torn-tail repair before each append."""

    def __init__(self, path: str, lock: FlockLock) -> None:
        super().__init__(path, lock_obj=lock)
        self.flock = lock

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self.flock_held():
            _cut_torn_tail(self._file_path)
            super().append_logs(logs)  # takes the (re-entrant) lock again: a no-op

    def flock_held(self) -> Any:
        return _Held(self.flock)


class _Held:
    def __init__(self, lock: FlockLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _cut_torn_tail(path: str) -> None:
    """Drop a last line that has no newline (a write cut short); call with the lock held."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            at = chunk.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        else:
            keep = 0
        logger.warning("%s: cut a torn last record (%d bytes) left by a writer that died", path, size - keep)
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


class JournalSearchStorage(StoreFields, JournalStorage):
    """JournalStorage with the budget, owners, reaping hooks and counters of ``SearchStorage``.

    Args:
        location: a ``journal`` :class:`StorageLocation`.
        budget: the study's ``n_trials``; ``None`` for no limit.
        run_id: identifies this launch in the trials it creates.
        policy: bounds the wait for the file lock.
    """

    def __init__(
        self,
        location: StorageLocation,
        *,
        budget: int | None = None,
        run_id: str = "",
        policy: RetryPolicy | None = None,
    ) -> None:
        self._init_fields(location, location.path, budget, run_id, policy)
        self._pending_attrs: dict[int, dict[str, Any]] = {}
        self._flock = FlockLock(location.path, self.policy)
        self.backend = _Backend(location.path, self._flock)
        super().__init__(self.backend)
        # Re-entrant, and always taken before the file lock: our methods hold both across a
        # read-count-append and call Optuna's methods, which take this one again.
        self._thread_lock = threading.RLock()  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        raise TypeError("JournalSearchStorage is opened per process from its location; do not pickle it")

    # -- budget-aware trial creation ---------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        started = time.monotonic()
        owned = template_trial is None
        if template_trial is None:
            template_trial = FrozenTrial(
                number=-1, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=datetime.now(), datetime_complete=None, params={},
                distributions={}, user_attrs={}, system_attrs={OWNER_KEY: owner_record(self.run_id)},
                intermediate_values={}, trial_id=-1,
            )
        with self._thread_lock, self.backend.flock_held():
            if self.budget is not None:
                taken = sum(n for state, n in self._counts(study_id).items() if state in BUDGET_STATES)
                if taken >= self.budget:
                    raise BudgetExhausted(f"{taken} of {self.budget} trials taken")
            trial_id = JournalStorage.create_new_trial(self, study_id, template_trial)
        if owned:
            self.created_trial_ids.add(trial_id)
        self.op_seconds.append(time.monotonic() - started)
        return trial_id

    def update_study_user_attr(self, study_id: int, key: str, update: Callable[[Any], Any]) -> None:
        """Set a study user attr to ``update(its value or None)`` under the log's lock: no other
        writer's append comes between the read and the write."""
        with self._thread_lock, self.backend.flock_held():
            self._sync_with_backend()
            current = self._replay_result.get_study(study_id).user_attrs.get(key)
            JournalStorage.set_study_user_attr(self, study_id, key, update(current))

    def _counts(self, study_id: int) -> Counter[TrialState]:
        with self._thread_lock:
            self._sync_with_backend()
            return Counter(t.state for t in self._replay_result.get_all_trials(study_id, None))

    # -- the final state with the trial's attrs, in one write ------------------------------------
    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id in self.created_trial_ids:
            self._pending_attrs.setdefault(trial_id, {})[key] = value
            return
        JournalStorage.set_trial_user_attr(self, trial_id, key, value)

    # -- reads in this process include the attrs buffered for its running trials ---------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._with_pending(JournalStorage.get_trial(self, trial_id))

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = JournalStorage.get_all_trials(self, study_id, deepcopy, states)
        if not self._pending_attrs:
            return trials
        return [self._with_pending(t) for t in trials]

    def _with_pending(self, trial: FrozenTrial) -> FrozenTrial:
        """``trial`` with the user attrs buffered for it (a copy: the replay's own stays as is)."""
        pending = self._pending_attrs.get(trial._trial_id)
        if not pending:
            return trial
        trial = copy.deepcopy(trial)
        trial.user_attrs = {**trial.user_attrs, **pending}
        return trial

    def close(self) -> None:
        """Release this process's lock file (the log itself is opened per append)."""
        self._flock.close()

    def flush_trial(self, trial_id: int) -> None:
        """Write the attrs buffered so far (the trial's config) in one append, before it runs."""
        pending = self._pending_attrs.pop(trial_id, None)
        if not pending:
            return
        started = time.monotonic()
        with self._thread_lock, self.backend.flock_held():
            worker = self._replay_result.worker_id
            self.backend.append_logs([
                {"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "worker_id": worker,
                 "trial_id": trial_id, "user_attr": {k: v}}
                for k, v in pending.items()
            ])
        self.op_seconds.append(time.monotonic() - started)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        started = time.monotonic()
        try:
            if not state.is_finished():
                return JournalStorage.set_trial_state_values(self, trial_id, state, values)
            pending = self._pending_attrs.get(trial_id, {})
            with self._thread_lock, self.backend.flock_held():
                self._sync_with_backend()
                trial = self._replay_result.get_trial(trial_id)
                if trial.state.is_finished():
                    raise UpdateFinishedTrialError(
                        f"Trial#{trial.number} has already finished and can not be updated."
                    )
                worker = self._replay_result.worker_id
                logs: list[dict[str, Any]] = [
                    {"op_code": JournalOperation.SET_TRIAL_USER_ATTR, "worker_id": worker,
                     "trial_id": trial_id, "user_attr": {k: v}}
                    for k, v in pending.items()
                ]
                logs.append({
                    "op_code": JournalOperation.SET_TRIAL_STATE_VALUES, "worker_id": worker,
                    "trial_id": trial_id, "state": state, "values": values,
                    "datetime_complete": datetime.now(tz=timezone.utc).isoformat(timespec="microseconds"),
                })
                self.backend.append_logs(logs)
                self._sync_with_backend()
            return True
        finally:
            if state.is_finished():
                self._pending_attrs.pop(trial_id, None)
                self.created_trial_ids.discard(trial_id)
            self.op_seconds.append(time.monotonic() - started)

    # -- queries for the launcher ------------------------------------------------------------------
    def count_states(self, study_id: int) -> dict[str, int]:
        """``{state name: count}`` for the study."""
        return {state.name: n for state, n in self._counts(study_id).items()}

    def has_waiting(self, study_id: int) -> bool:
        """Does the study hold a WAITING (enqueued) trial?"""
        return self._counts(study_id).get(TrialState.WAITING, 0) > 0

    def running_owners(self, study_id: int) -> list[tuple[int, int, dict[str, Any]]]:
        """``(trial_id, number, owner)`` of every RUNNING trial of the study."""
        with self._thread_lock:
            self._sync_with_backend()
            trials = self._replay_result.get_all_trials(study_id, (TrialState.RUNNING,))
            out = []
            for t in trials:
                owner = t.system_attrs.get(OWNER_KEY)
                out.append((t._trial_id, t.number, dict(owner) if isinstance(owner, dict) else {}))
            return out

    def failure_attrs(self, study_id: int, keys: Sequence[str]) -> list[FailureRow]:
        """``(number, state name, {key: value})`` of every PRUNED or FAIL trial, only the user
        attrs ``keys`` (what ``_failures`` needs to tell an error from a pruner decision)."""
        return failure_rows(self.get_all_trials(study_id, deepcopy=False, states=FAILED_STATES), keys)

    def stale_trials(self, study_id: int) -> list[int]:
        """No heartbeats on a journal: dead owners are found by pid on this host."""
        return []

    def add_budget_index(self) -> None:
        """Nothing to index in a log."""


def is_journal_file(path: Path) -> bool:
    """True when ``path`` is empty or starts with a JSON record that has an ``op_code``."""
    try:
        with open(path, "rb") as handle:
            head = handle.readline(1 << 20)
    except OSError:
        return False
    if not head:
        return True
    if head.startswith(SQLITE_MAGIC):
        return False
    try:
        first = json.loads(head)
    except ValueError:
        return False
    return isinstance(first, dict) and "op_code" in first


def read_only_storage(path: Path) -> JournalStorage:
    """A JournalStorage that only reads ``path`` (which must exist): no lock, no write."""
    return JournalStorage(JournalFileBackend(str(path)))


def journal_studies(where: str, path: Path) -> tuple[str, ...]:
    """The names of the studies in the journal file ``path``, replayed without a lock or a write.

    Raises:
        StorageError: no such file, a directory, not a journal, or unreadable (names ``where``).
    """
    if not path.exists():
        raise StorageError(where, "no such file")
    if path.is_dir():
        raise StorageError(where, "is a directory, not a journal file")
    if not is_journal_file(path):
        raise StorageError(where, "is not an Optuna journal file")
    try:
        return tuple(s.study_name for s in read_only_storage(path).get_all_studies())
    except Exception as err:
        raise StorageError(where, f"cannot read the journal ({type(err).__name__}: {one_line(err)})") from err


def preflight(path: Path, study_name: str, directions: Sequence[str]) -> bool:
    """Check the journal file (or where it will be created) without changing anything.

    Returns:
        True when the study already exists in the file (a resume).

    Raises:
        StorageError: an unwritable directory, a file that is not a journal, a journal that
            cannot be read, or a stored direction that differs from the config.
    """
    shown = f"journal:{path}"
    check_directory(shown, path.parent, "directory")
    if not path.exists():
        return False
    if path.is_dir():
        raise StorageError(shown, "is a directory, not a journal file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(shown, "journal file is not readable and writable")
    if not is_journal_file(path):
        raise StorageError(shown, "exists but is not an Optuna journal file; move it or pick another path")
    try:
        storage = read_only_storage(path)
        studies = {s.study_name: s for s in storage.get_all_studies()}
    except Exception as err:
        raise StorageError(shown, f"cannot read the journal ({type(err).__name__}: {err})") from err
    if study_name not in studies:
        return False
    check_directions(shown, study_name, [d.name.lower() for d in studies[study_name].directions], directions)
    return True


__all__ = [
    "FlockLock", "JournalSearchStorage", "is_journal_file", "journal_studies", "preflight", "read_only_storage",
]

"""A worker loop's view of its launcher: is it still there, and did it stop the search?

A loky worker is the launcher's child and watches ``getppid()``, or a fork of the preloaded
server and watches the launcher's multiprocessing sentinel (``_forkserver``). A Dask worker's
parent is its nanny, possibly on another machine: it reads the launcher's lease from the study
(``runtime/_lease.py``). It goes through the study's storage, so it works for any backend and
any number of machines.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import optuna

from hparam_joblib._errors import HparamError
from hparam_joblib.runtime._lease import LEASE_MISSES, launcher_key, stop_reason
from hparam_joblib.runtime.loops import _forkserver
from hparam_joblib.runtime.loops._task import WorkerTask


class LauncherGone(Exception):
    """The launcher process died (or stopped the search); this worker must stop."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        # Raised through study.optimize, which would log it with a traceback; we say it once.
        optuna.logging.set_verbosity(optuna.logging.ERROR)


def parent_gone(task: WorkerTask) -> bool:
    """A loky worker's check: is the launcher gone? (It is the launcher's child, or a fork of
    the preloaded server.)"""
    return _forkserver.launcher_gone() if _forkserver.FORKED_FROM else os.getppid() != task.launcher_pid


class LauncherWatch:
    """The worker's side: is the launcher still there? (cheap; reads the lease at most once a second)."""

    def __init__(self, task: WorkerTask, storage: Any, study_id: int = -1) -> None:
        self.task = task
        self.storage = storage
        self.study_id = study_id
        self.why = ""
        #: The launcher's reason for stopping this launch (from its lease), once it stopped it.
        self.stop_reason = ""
        self._checked = -math.inf
        self._changed = time.monotonic()
        self._seen: Any = None

    def gone(self) -> bool:
        """Is the launcher gone, or did it stop this launch? (Then ``why`` says which.)"""
        if self.why:
            return True
        interval = self.task.lease_interval
        if interval is None:
            if parent_gone(self.task):
                self.why = "the launcher process is gone"
            return bool(self.why)
        now = time.monotonic()
        if now - self._checked < min(1.0, interval / 2):
            return False
        self._checked = now
        lease = self._lease()
        if self._stopped(lease):
            return True
        if lease != self._seen:
            self._seen = lease
            self._changed = now
        elif now - self._changed > LEASE_MISSES * interval:
            self.why = f"the launcher's lease was not renewed for {now - self._changed:.0f} s (launcher gone)"
        return bool(self.why)

    def stopped_now(self) -> bool:
        """Has the launcher stopped this launch? Read from the storage now (no throttle).

        Asked when a trial's process was killed: the launcher writes the stop before it kills the
        workers, and loky kills a worker's children first, so a worker that sees its trial process
        die in a shutdown must not record that as the trial's own failure.
        """
        try:
            lease = self._lease()
        except HparamError:
            return False
        return self._stopped(lease)

    def _lease(self) -> Any:
        """The launcher's lease record for this launch, read from the storage."""
        return self.storage.get_study_system_attrs(self.study_id).get(launcher_key(self.task.run_id))

    def _stopped(self, lease: Any) -> bool:
        """Does ``lease`` say the launcher stopped this launch? (Then ``why``/``stop_reason`` are set.)"""
        reason = stop_reason(lease)
        if reason is None:
            return False
        self.why = self.why or "the launcher stopped the search"
        self.stop_reason = reason
        return True

"""Stopping a launch: tell its loops, stop the backend, fail its RUNNING trials."""

from __future__ import annotations

import logging
import time

from hparam_joblib._errors import HparamError
from hparam_joblib.runtime.launcher._launcher_lease import LauncherLease
from hparam_joblib.runtime.loops._backend import Backend
from hparam_joblib.storage import StudyStore, fail_trial

logger = logging.getLogger("hparam_joblib")


def stop_launch(
    backend: Backend, lease: LauncherLease | None, storage: StudyStore, study_id: int, run_id: str,
    reason: str,
) -> None:
    """Stop every loop of this launch and fail its RUNNING trials."""
    # Written before any worker is killed: loops on a shared cluster stop at their next check
    # (within a second), and a worker that sees its trial process killed by the shutdown (loky
    # kills a worker's children first) records the trial as stopped, not as its failure.
    (lease or LauncherLease(storage, study_id, run_id, interval=1.0)).stop(reason)
    backend.stop()
    if not backend.owns_workers:
        _wait_for_run_trials(storage, study_id, run_id, timeout=3.0)
    _fail_run_trials(storage, study_id, run_id, reason)


def _wait_for_run_trials(storage: StudyStore, study_id: int, run_id: str, timeout: float) -> None:
    """Give loops on a shared cluster a moment to fail their own trials (with their reason)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if not any(o.get("run") == run_id for _, _, o in storage.running_owners(study_id)):
                return
        except HparamError:
            return
        time.sleep(0.2)


def _fail_run_trials(storage: StudyStore, study_id: int, run_id: str, reason: str) -> None:
    """Fail this launch's RUNNING trials once its workers are dead (best effort)."""
    try:
        for trial_id, _number, owner in storage.running_owners(study_id):
            if owner.get("run") == run_id:
                fail_trial(storage, trial_id, reason, kind="interrupted")
    except HparamError as err:  # the next launch reaps them (their owners are dead)
        logger.warning("could not mark this run's trials FAIL now (%s); the next run will", err)

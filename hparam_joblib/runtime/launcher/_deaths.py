"""Worker deaths, in the launcher: fail the dead workers' trials with a reason, say so, and
stop the search after ``max_worker_deaths`` deaths in a row without a finished trial."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from hparam_joblib._errors import WorkerCrashError
from hparam_joblib.runtime.loops._backend import Death
from hparam_joblib.storage import StudyStore, fail_trial, n_finished, owner_is_dead

logger = logging.getLogger("hparam_joblib")

#: A death with an unknown pid and a dead process found within this many seconds are one death.
_SAME_DEATH_SECONDS = 5.0

#: ``(number, pid, owner)`` of a trial failed because its worker died.
FailedTrial = tuple[int, Any, dict[str, Any]]


class DeathCount:
    """Worker deaths in a row, without a trial finishing in between.

    A death is seen up to a poll after it happened, so a trial that finished just after it may
    be counted first. To never stop a search that makes progress, a death starts a new row when
    the study holds more finished trials than it surely held before the previous death (the count
    at the poll before that death was seen).
    """

    def __init__(self, limit: int, finished: int) -> None:
        self.limit = limit
        self.mark = finished
        #: Finished trials at the previous poll: surely finished before a death seen now.
        self.before = finished
        self.in_a_row = 0
        #: (host, pid) of the deaths counted: a death seen twice (left the cluster, then
        #: KilledWorker) counts once.
        self.seen: set[tuple[Any, Any]] = set()
        self.last_swept = -math.inf
        self.last_unknown = -math.inf

    def is_new(self, death: Death, swept: bool, now: float) -> bool:
        """Is ``death`` not counted yet? (``swept``: a death of this poll was found by the sweep.)"""
        if death.pid is not None and (death.host, death.pid) in self.seen:
            return False  # seen before under another name (left the cluster / process gone / KilledWorker)
        if death.pid is not None:
            self.seen.add((death.host, death.pid))
        # A Dask worker that left before its pid was learnt and a dead owner found by the sweep
        # are most likely one death seen twice: count them once (never stop a search early).
        if death.pid_unknown and (swept or now - self.last_swept < _SAME_DEATH_SECONDS):
            logger.info("same worker death seen again: %s", death.what)
            return False
        if death.found_by_sweep:
            self.last_swept = now
            if now - self.last_unknown < _SAME_DEATH_SECONDS:
                self.last_unknown = -math.inf  # the other half of that one death
                return False
        if death.pid_unknown:
            self.last_unknown = now
        return True

    def record(self, finished: int) -> int:
        """Count one death, the study holding ``finished`` trials; returns the deaths in a row."""
        if finished > self.mark:
            self.in_a_row = 0
        self.mark = self.before
        self.in_a_row += 1
        return self.in_a_row


def on_deaths(found: list[Death], storage: StudyStore, study_id: int, run_id: str, count: DeathCount) -> None:
    """Fail the dead workers' trials (with the reason), say so, and stop after too many in a row.

    ``found`` are the deaths the backend saw; trials of this launch whose owner process is gone
    from this host are deaths too (one per pid), unless already counted.

    Raises:
        WorkerCrashError: ``max_worker_deaths`` deaths in a row without a finished trial.
    """
    events = _death_events(found, storage, study_id, run_id)
    if not events:
        return
    finished = n_finished(storage.count_states(study_id))
    now = time.monotonic()
    swept = any(d.found_by_sweep for d, _ in events)
    for death, failed in events:
        which = ", ".join(f"trial {number} (pid {pid})" for number, pid, _ in failed) or "no running trial left"
        if not count.is_new(death, swept, now):
            continue
        in_a_row = count.record(finished)
        logger.warning(
            "a worker process died: %s; %s marked FAIL and re-run "
            "[worker death %d in a row; the search stops at max_worker_deaths=%d]",
            death.what, which, in_a_row, count.limit,
        )
        if in_a_row >= count.limit:
            raise WorkerCrashError(
                f"{in_a_row} worker processes died in a row without a trial finishing "
                f"(max_worker_deaths={count.limit}); last: {death.what}, {which}; "
                "the failed trials' failure_reason says more"
            )


def _death_events(
    found: list[Death], storage: StudyStore, study_id: int, run_id: str
) -> list[tuple[Death, list[FailedTrial]]]:
    """Each death with the trials failed for it: the backend's ``found``, then the owners found
    dead on this host (this launch's, one death per pid; other launches' are only failed)."""
    events = [(death, _fail_dead_trials(storage, study_id, death)) for death in found]
    unnamed: dict[tuple[Any, Any], list[FailedTrial]] = {}
    for number, pid, owner in _fail_dead_trials(storage, study_id, None):
        if owner.get("run") == run_id:
            unnamed.setdefault((owner.get("host"), pid), []).append((number, pid, owner))
        else:
            logger.info("trial %d of another launch marked FAIL: its process (pid %s) is gone", number, pid)
    named = {(d.host, d.pid) for d in found}
    for (host, pid), failed in unnamed.items():
        if (host, pid) in named:  # the same death, its trials failed by the second look
            events = [(d, t + failed if (d.host, d.pid) == (host, pid) else t) for d, t in events]
        else:
            events.append((Death(f"worker process {pid} on {host} is gone", host, pid, found_by_sweep=True), failed))
    return events


def _fail_dead_trials(storage: StudyStore, study_id: int, death: Death | None) -> list[FailedTrial]:
    """Fail RUNNING trials owned by the dead worker: by host and pid (any host) when known,
    else (``death`` unknown or without a pid) any owner process found dead on this host.

    Returns:
        ``(number, pid, owner)`` of each trial failed.
    """
    failed = []
    for trial_id, number, owner in storage.running_owners(study_id):
        if not owner:
            continue
        pid = owner.get("pid")
        if death is not None and death.pid is not None:
            dead = pid == death.pid and owner.get("host") == death.host
        else:
            dead = owner_is_dead(owner)
        if dead:
            how = f" ({death.what})" if death is not None else ""
            reason = (
                f"its worker process (pid {pid} on {owner.get('host')}) died while the trial ran"
                f"{how}; the trial is run again"
            )
            if fail_trial(storage, trial_id, reason):
                failed.append((number, pid, owner))
    return failed

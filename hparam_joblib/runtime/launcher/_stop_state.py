"""The launcher's side of the stop rules (``runtime/_stop.py``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from hparam_joblib.config._schema import StopRules
from hparam_joblib.runtime._stop import read_stop
from hparam_joblib.storage import StudyStore


@dataclass
class StopState:
    """The launcher's view of this run's stop rules (see ``_stop``): has one fired, and when
    does the grace for the trials still running end."""

    run_id: str
    rules: StopRules
    deadline: float | None
    why: str = ""
    #: ``time.time()`` when the rule fired; running trials get ``rules.grace`` seconds from it.
    since: float | None = None
    #: Trials still running at the end of the grace, stopped and marked FAIL.
    grace_stopped: int = 0
    checked: float = -math.inf

    def check(self, storage: StudyStore, study_id: int, force: bool = False) -> bool:
        """True once a rule fired (reads the study's stop record at most once a second, or now
        with ``force``: a loop just ended)."""
        if self.why:
            return True
        now = time.time()
        if self.deadline is not None and now >= self.deadline:
            self.why = f"timeout: {self.rules.timeout:g} s passed, so no new trial started"
            self.since = self.deadline
        elif (self.rules.no_improvement is not None or self.rules.at_value is not None) and (
            force or now - self.checked >= 1.0
        ):
            self.checked = now
            record = read_stop(storage.get_study_system_attrs(study_id), self.run_id)
            if record is not None:
                self.why = str(record["why"])
                self.since = float(record.get("at") or now)
        return bool(self.why)

    def grace_over(self) -> bool:
        """True once the trials still running have had their ``stop_grace``."""
        return self.since is not None and time.time() >= self.since + self.rules.grace

    def reason(self) -> str:
        """The ``failure_reason`` of a trial stopped at the end of the grace."""
        return (
            f"stopped: still running stop_grace ({self.rules.grace:g} s) after the search stopped "
            f"({self.why}); not counted, the next run re-runs it"
        )

    def grace_message(self, n_running: int) -> str:
        """The warning when the grace ends with ``n_running`` trials still running."""
        return f"stop_grace passed: stopping {n_running} running trial(s)"

    def summary(self) -> str:
        """Why the run stopped, for the summary."""
        if not self.why:  # e.g. every loop ended at the deadline before the launcher looked
            self.why = f"timeout: {self.rules.timeout:g} s passed, so no new trial started"
        text = self.why
        if self.grace_stopped:
            text += (
                f"; {self.grace_stopped} trial(s) still running after stop_grace ({self.rules.grace:g} s) "
                "were stopped (FAIL, re-run by the next run)"
            )
        return text


#: A ``--tune-n-jobs`` rung: trials still running this fraction of ``--tune-seconds`` (at least
#: a second) after the rung's time is up are stopped.
RUNG_GRACE_FRACTION = 0.25


def rung_grace(seconds: float) -> float:
    """Seconds the trials still running when a rung's ``--tune-seconds`` are up may take."""
    return max(1.0, RUNG_GRACE_FRACTION * seconds)


@dataclass
class RungStop(StopState):
    """The clock of a ``--tune-n-jobs`` rung (``run_seconds``): it starts when the launcher first
    sees a trial of the rung (the workers' start-up is not counted), no loop starts a trial after
    its own ``run_seconds``, and the trials still running :func:`rung_grace` after the rung's
    time are stopped (FAIL, not counted in the rung's rate). Build it with :meth:`for_rung`."""

    @classmethod
    def for_rung(cls, run_id: str, seconds: float) -> RungStop:
        return cls(run_id, StopRules(timeout=seconds, grace=rung_grace(seconds)), None)

    def check(self, storage: StudyStore, study_id: int, force: bool = False) -> bool:
        if self.why:
            return True
        now = time.time()
        if self.deadline is None:
            counts = storage.count_states(study_id)
            if any(n for state, n in counts.items() if state != "WAITING"):
                self.deadline = now + float(self.rules.timeout or 0.0)
            return False
        if now >= self.deadline:
            self.why = f"--tune-seconds: {self.rules.timeout:g} s of trials passed"
            self.since = self.deadline
        return bool(self.why)

    def grace_message(self, n_running: int) -> str:
        return (
            f"tune: {self.rules.timeout:g} s + {self.rules.grace:g} s passed: stopping {n_running} "
            "running trial(s) (not counted)"
        )

    def reason(self) -> str:
        return (
            f"stopped: still running {self.rules.grace:g} s after the --tune-n-jobs rung's "
            f"{self.rules.timeout:g} s; not counted"
        )

    def summary(self) -> str:
        text = f"--tune-seconds: {self.rules.timeout:g} s of trials passed"
        if self.grace_stopped:
            text += f"; {self.grace_stopped} trial(s) still running {self.rules.grace:g} s later were stopped"
        return text

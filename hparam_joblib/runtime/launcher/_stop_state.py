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

"""What the launcher, workers and progress bar use of a storage (:class:`StudyStore`), the
states that take a budget slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Sequence
from typing import Any, Protocol, TypeVar

from optuna.trial import FrozenTrial, TrialState

from hparam_joblib.storage._location import StorageLocation

logger = logging.getLogger("hparam_joblib")



#: States that use up a slot of the budget. FAIL (a crashed or interrupted trial) does not.
BUDGET_STATES = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)


FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def n_finished(counts: dict[str, int]) -> int:
    """COMPLETE + PRUNED in a ``count_states`` result: the trials that count toward n_trials."""
    return sum(counts.get(s.name, 0) for s in FINISHED_STATES)


def n_taken(counts: dict[str, int]) -> int:
    """Trials that hold a budget slot (finished, running or queued) in a ``count_states`` result."""
    return sum(counts.get(s.name, 0) for s in BUDGET_STATES)


class BudgetExhausted(Exception):
    """Internal: every slot of ``n_trials`` is taken (finished, running or queued)."""


class StudyStore(Protocol):
    """What the launcher, workers and progress bar use of a storage (RDB or journal)."""

    location: StorageLocation
    db_path: str
    budget: int | None
    family: int | None
    lock_retries: int
    op_seconds: list[float]
    created_trial_ids: set[int]
    popped_trial_ids: set[int]

    def count_states(self, study_id: int) -> dict[str, int]: ...
    def has_waiting(self, study_id: int) -> bool: ...
    def running_owners(self, study_id: int) -> list[tuple[int, int, dict[str, Any]]]: ...
    def stale_trials(self, study_id: int) -> list[int]: ...
    def add_budget_index(self) -> None: ...
    def get_trial(self, trial_id: int) -> FrozenTrial: ...
    def get_best_trial(self, study_id: int) -> FrozenTrial: ...
    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]: ...
    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]: ...
    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None: ...
    def update_study_user_attr(self, study_id: int, key: str, update: Callable[[Any], Any]) -> None: ...
    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]: ...
    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None: ...
    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None: ...
    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None: ...
    def flush_trial(self, trial_id: int) -> None: ...
    def close(self) -> None: ...
    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool: ...


T = TypeVar("T")



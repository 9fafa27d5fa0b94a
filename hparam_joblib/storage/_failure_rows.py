"""Why trials did not complete, as ``(number, state name, {attr: value})`` rows: what
``runtime._failures`` reads to tell an error from a pruner decision, a timeout or a death.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

#: The states of a trial that did not complete.
FAILED_STATES = (TrialState.PRUNED, TrialState.FAIL)

FailureRow = tuple[int, str, dict[str, Any]]


def failure_rows(trials: Iterable[FrozenTrial], keys: Sequence[str]) -> list[FailureRow]:
    """A row per PRUNED or FAIL trial of ``trials``, with only its user attrs ``keys``."""
    return [
        (t.number, t.state.name, {k: t.user_attrs[k] for k in keys if k in t.user_attrs})
        for t in trials
        if t.state in FAILED_STATES
    ]

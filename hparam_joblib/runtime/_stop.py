"""Stop rules of a run: ``timeout``, ``stop_no_improvement``, ``stop_at_value`` (and ``stop_grace``).

Every rule counts from the start of the run (one launch of the search), so running the same
command again continues the search with fresh counters; ``n_trials`` stays the exact cap.

* ``timeout`` is a wall-clock deadline shared by every worker loop (``WorkerTask.deadline``): no
  trial starts after it.
* The result rules are decided by the worker whose trial just finished (an Optuna callback in
  ``loops/_callbacks.ResultRules``), from the trials in the study, and recorded in the study system attr
  ``hparam_joblib:stop:<run id>``; every other loop reads it after its own trial and stops too.
  Going through the study makes it work for any backend and any number of machines.
* Trials still running when a rule fires may finish for ``stop_grace`` seconds; then the
  launcher stops the loops, and those trials are FAIL (not counted; the next run re-runs them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._keys import OWNER_KEY, STOP_KEY_PREFIX
from hparam_joblib.config._schema import StopRules


def stop_key(run_id: str) -> str:
    """The study system attr holding why run ``run_id`` stopped."""
    return STOP_KEY_PREFIX + run_id


def stop_record(why: str) -> dict[str, Any]:
    """What is stored under :func:`stop_key`: the reason and when (``time.time()``)."""
    return {"why": why, "at": time.time()}


def read_stop(attrs: Mapping[str, Any], run_id: str) -> dict[str, Any] | None:
    """The stop record of ``run_id`` among a study's system attrs, or None."""
    record = attrs.get(stop_key(run_id))
    return record if isinstance(record, dict) and record.get("why") else None


def _run_of(trial: FrozenTrial) -> Any:
    owner = trial.system_attrs.get(OWNER_KEY)
    return owner.get("run") if isinstance(owner, Mapping) else None


def result_rule_met(trials: Iterable[FrozenTrial], run_id: str, maximize: bool, rules: StopRules) -> str | None:
    """Why the run must stop by ``stop_no_improvement`` or ``stop_at_value``, or None.

    The run's finished trials (COMPLETE and PRUNED) are taken in completion order; the best
    value to beat is the best COMPLETE trial of earlier runs. A PRUNED trial never improves.
    """
    if rules.no_improvement is None and rules.at_value is None:
        return None
    mine: list[FrozenTrial] = []
    best: float | None = None
    best_number: int | None = None
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        if _run_of(t) == run_id:
            mine.append(t)
        elif t.state == TrialState.COMPLETE and t.value is not None and (best is None or _better(t.value, best, maximize)):
            best, best_number = t.value, t.number
    mine.sort(key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    since = 0
    for t in mine:
        value = t.value if t.state == TrialState.COMPLETE else None
        if value is not None and rules.at_value is not None and (
            value >= rules.at_value if maximize else value <= rules.at_value
        ):
            sign = ">=" if maximize else "<="
            return f"trial {t.number} reached stop_at_value: {value:.6g} {sign} {rules.at_value:g}"
        if value is not None and (best is None or _better(value, best, maximize)):
            best, best_number, since = value, t.number, 0
        else:
            since += 1
        if rules.no_improvement is not None and since >= rules.no_improvement:
            where = "none completed yet" if best is None else f"{best:.6g}, trial {best_number}"
            return (
                f"stop_no_improvement: {since} finished trials in a row without beating the best "
                f"value ({where})"
            )
    return None


def _better(value: float, best: float, maximize: bool) -> bool:
    return value > best if maximize else value < best

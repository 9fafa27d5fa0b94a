"""The callbacks a worker passes to ``study.optimize``: each stops the loop for one reason
(launcher gone, deadline, a stop rule, the stop-fast rule) or hands the trial to MLflow.

Any callback makes Optuna re-read the finished trial: :func:`optimize_callbacks` lists only
the ones this loop needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna

from hparam_joblib.runtime._stop import read_stop, result_rule_met, stop_key, stop_record
from hparam_joblib.runtime._tracking import TrialLogger
from hparam_joblib.runtime.loops._objective import Objective

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]

#: How often a loop paused by the stop-fast rule looks again.
WAIT_FOR_OTHERS_SECONDS = 0.25


class ResultRules:
    """The callback of ``stop_no_improvement`` / ``stop_at_value`` (see ``_stop``): after each
    trial, stop when another loop recorded a stop for this run, or when a rule is met now
    (then record it, for the other loops and the launcher)."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.stopped = False

    @staticmethod
    def wanted(objective: Objective) -> bool:
        """Does this search have a rule on the results (no improvement, a value reached)?"""
        rules = objective.task.config.stop
        return rules.no_improvement is not None or rules.at_value is not None

    def recorded(self, study: optuna.Study) -> bool:
        """Has a loop recorded a stop for this run (or this one fired)?"""
        attrs = self.objective.storage.get_study_system_attrs(study._study_id)
        self.stopped = self.stopped or read_stop(attrs, self.objective.task.run_id) is not None
        return self.stopped

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        task = self.objective.task
        if not self.recorded(study):
            why = result_rule_met(
                study.get_trials(deepcopy=False), task.run_id, task.config.direction == "maximize", task.config.stop
            )
            if why is not None:
                self.objective.storage.set_study_system_attr(study._study_id, stop_key(task.run_id), stop_record(why))
                self.stopped = True
        if self.stopped:
            study.stop()


def optimize_callbacks(objective: Objective, deadline: float | None, rules: ResultRules | None) -> list[Callback]:
    """The callbacks this loop needs, in the order they run.

    On Dask the launcher's lease is checked between trials (no empty trial once it is gone); a
    loky worker checks its parent pid at the start of each trial instead.
    """
    callbacks: list[Callback] = []
    if objective.task.lease_interval is not None:
        callbacks.append(_stop_when_gone(objective))
    if objective.jobs is not None:
        callbacks.append(_stop_when_slot_closed(objective))
    if deadline is not None:
        callbacks.append(_stop_after(deadline))
    if rules is not None:
        callbacks.append(rules)
    if objective.tracker is not None:
        callbacks.append(_track(objective.tracker))
    if objective.task.error_stop is not None:
        callbacks.append(_pause_when_broken(objective))
    return callbacks


def _stop_when_gone(objective: Objective) -> Callback:
    """Stop before the next trial is created once the launcher is gone (no empty FAIL trial)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if objective.launcher_gone():
            study.stop()

    return callback


def _stop_when_slot_closed(objective: Objective) -> Callback:
    """Stop before the next trial once memory ran out and this loop's job slot closed, else wait
    until no more trials run than slots are open (``_jobs``)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if objective.slot_closed():
            study.stop()
        else:
            objective.wait_for_room()

    return callback


def _track(tracker: TrialLogger) -> Callback:
    """Hand each finished trial (its final state, values, reports, attrs) to the MLflow writer."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tracker.submit(trial)

    return callback


def _pause_when_broken(objective: Objective) -> Callback:
    """Start no new trial once the run's first ``max_trial_errors`` trials all failed by an
    error: wait for the launcher to stop the search (or for a trial elsewhere to complete,
    which turns the rule off)."""
    rule = objective.task.error_stop
    assert rule is not None

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        storage = objective.storage
        if not rule.armed or not rule.check(storage, study._study_id, storage.count_states(study._study_id)):
            return
        while rule.armed and not objective.launcher_gone():
            time.sleep(WAIT_FOR_OTHERS_SECONDS)
            if storage.count_states(study._study_id).get("COMPLETE", 0) > rule.complete_at_start:
                rule.armed = False
        if objective.launcher_gone():
            study.stop()

    return callback


def _stop_after(deadline: float) -> Callback:
    """Stop once ``deadline`` (``time.time()``) passed."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if time.time() >= deadline:
            study.stop()

    return callback

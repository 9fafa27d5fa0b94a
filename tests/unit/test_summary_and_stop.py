"""Unit tests for the summary's stop line and verbosity, and the stop-rule decision (issue 12)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._keys import OWNER_KEY
from hparam_joblib._result import SearchResult
from hparam_joblib.config._schema import StopRules
from hparam_joblib.runtime._stop import read_stop, result_rule_met, stop_key, stop_record
from hparam_joblib.runtime.launcher._progress import format_summary

T0 = datetime(2026, 12, 1, 12, 0, 0)
OPS = {"count": 10.0, "p50_ms": 1.0, "p99_ms": 5.0, "max_ms": 9.0}


def result(**kw: Any) -> SearchResult:
    base: dict[str, Any] = {
        "study_name": "s", "storage_url": "sqlite:////tmp/s.db", "db_path": "/tmp/s.db", "n_trials": 100,
        "counts": {"COMPLETE": 7, "PRUNED": 3}, "best_value": 0.5, "best_params": {"x": 0.5},
        "best_config": {}, "best_trial_number": 2, "wall_time": 60.2, "storage_ops": OPS,
    }
    base.update(kw)
    return SearchResult(**base)


def test_summary_says_why_the_run_stopped() -> None:
    """A stop rule: 'stopped', the reason, and that the same command continues."""
    text = format_summary(result(stop_reason="timeout: 60 s passed, so no new trial started"))
    lines = text.splitlines()
    assert lines[0] == "hparam_joblib: study s stopped: 10/100 finished (COMPLETE 7, PRUNED 3) in 60.2 s"
    assert lines[1] == (
        "  stopped by:   timeout: 60 s passed, so no new trial started; the same command continues the search"
    )


@pytest.mark.parametrize(("verbose", "line"), [
    (False, "  lock retries: 2"),
    (True, "  lock retries: 2 (workers' storage calls: 10, p50 1.0 ms, p99 5.0 ms)"),
])
def test_storage_latency_only_when_verbose(verbose: bool, line: str) -> None:
    """The workers' storage latency is internal detail: --verbose only."""
    text = format_summary(result(lock_retries=2), verbose=verbose)
    assert line in text.splitlines()
    assert ("storage calls" in text) is verbose


def trial(number: int, value: float | None, run: str, state: TrialState = TrialState.COMPLETE) -> FrozenTrial:
    """A finished trial of launch ``run``, completed ``number`` seconds after T0."""
    return FrozenTrial(
        number=number, state=state, value=value, values=None, datetime_start=T0 + timedelta(seconds=number),
        datetime_complete=T0 + timedelta(seconds=number + 0.5), params={"x": 0.1},
        distributions={"x": FloatDistribution(0, 1)}, user_attrs={},
        system_attrs={OWNER_KEY: {"run": run}}, intermediate_values={}, trial_id=number,
    )


@pytest.mark.parametrize(
    ("values", "rules", "maximize", "expected"),
    [
        # minimize: 3.0 then 2.0 (better), then three not better -> fires at the third
        ([3.0, 2.0, 2.5, 2.0, 9.0], StopRules(no_improvement=3), False,
         "stop_no_improvement: 3 finished trials in a row without beating the best value (2, trial 1)"),
        ([3.0, 2.0, 2.5, 2.0], StopRules(no_improvement=3), False, None),
        ([3.0, 2.0, 2.5, 1.0, 9.0], StopRules(no_improvement=3), False, None),  # 1.0 improved: count restarts
        ([1.0, 2.0, 3.0], StopRules(no_improvement=2), True, None),  # maximize: each one improves
        ([0.9, 0.5, 0.99], StopRules(at_value=0.95), True, "trial 2 reached stop_at_value: 0.99 >= 0.95"),
        ([0.9, 0.5], StopRules(at_value=0.95), True, None),
        ([0.3, 0.04], StopRules(at_value=0.05), False, "trial 1 reached stop_at_value: 0.04 <= 0.05"),
        ([], StopRules(no_improvement=1), False, None),
        ([1.0], StopRules(timeout=5.0), False, None),  # timeout is not a result rule
    ],
)
def test_result_rules(values: list[float], rules: StopRules, maximize: bool, expected: str | None) -> None:
    """The decision from the run's finished trials, in completion order."""
    trials = [trial(i, v, "run") for i, v in enumerate(values)]
    assert result_rule_met(trials, "run", maximize, rules) == expected


def test_pruned_trials_never_improve_and_earlier_runs_set_the_bar() -> None:
    """A PRUNED trial counts as not improving; the best of earlier runs is the one to beat."""
    earlier = [trial(0, 1.0, "old")]
    mine = [trial(1, 1.5, "new"), trial(2, 0.1, "new", TrialState.PRUNED)]
    assert result_rule_met(earlier + mine, "new", False, StopRules(no_improvement=2)) == (
        "stop_no_improvement: 2 finished trials in a row without beating the best value (1, trial 0)"
    )
    # the earlier run's own trials are not counted against the new run
    assert result_rule_met(earlier, "new", False, StopRules(no_improvement=1)) is None


def test_stop_record_round_trip() -> None:
    """The record a loop writes is found for its run only."""
    attrs = {stop_key("a"): stop_record("because")}
    assert read_stop(attrs, "a")["why"] == "because"  # type: ignore[index]
    assert read_stop(attrs, "b") is None


def test_tune_names_what_limits_the_recommended_n_jobs() -> None:
    """From the rung's rate, CPU seconds and peak: the cores, memory, the GPUs, or none of them."""
    from hparam_joblib.runtime.launcher._tune import Resources, Rung, what_limits

    def rung(n_jobs: int, rate: float, cpu: float, peak: float) -> Rung:
        return Rung(n_jobs, 10, 10.0, rate, peak, cpu_per_trial=cpu)

    cores = what_limits(rung(2, 2.0, 0.95, 100), Resources(cores=2, memory_mib=20000))
    assert cores.startswith("what limits it at n_jobs=2: the cores (the trials use 1.9 of 2 cores (95%)")
    memory = what_limits(rung(2, 0.5, 0.2, 4000), Resources(cores=8, memory_mib=9000))
    assert memory.startswith("what limits it at n_jobs=2: memory (") and "room for about 2 at once" in memory
    gpus = what_limits(rung(4, 1.0, 0.5, 100), Resources(cores=16, memory_mib=60000, gpus=4))
    assert gpus.startswith("what limits it at n_jobs=4: the GPUs")
    with_memory = Rung(4, 10, 10.0, 1.0, 100, cpu_per_trial=0.5, gpu_peak_mib=9300)
    text = what_limits(with_memory, Resources(cores=16, memory_mib=60000, gpus=4, gpu_memory_mib=81559))
    assert text.startswith("what limits it at n_jobs=4: the GPUs") and \
        "each trial peaks at 9300 MiB of GPU memory of 81559 MiB per device" in text, text
    idle = what_limits(rung(2, 2.0, 0.05, 100), Resources(cores=2, memory_mib=20000))
    assert "neither cores nor memory: the trials wait on something else" in idle
    assert "unknown" in what_limits(rung(2, 2.0, 0.0, 0.0), Resources(cores=2, memory_mib=None))

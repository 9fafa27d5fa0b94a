"""Unit tests for per-run throughput in ``hparam-joblib status`` (issue 12)."""

from __future__ import annotations

from datetime import datetime, timedelta

from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._keys import OWNER_KEY
from hparam_joblib.results._format import throughput_lines

T0 = datetime(2026, 12, 1, 12, 0, 0)


def trial(number: int, start: float, seconds: float, run: str | None) -> FrozenTrial:
    """A COMPLETE trial that started ``start`` s after T0 and ran ``seconds``."""
    return FrozenTrial(
        number=number, state=TrialState.COMPLETE, value=1.0, values=None,
        datetime_start=T0 + timedelta(seconds=start), datetime_complete=T0 + timedelta(seconds=start + seconds),
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs={},
        system_attrs={} if run is None else {OWNER_KEY: {"run": run, "pid": 1, "host": "h"}},
        intermediate_values={}, trial_id=number,
    )


def test_two_runs_have_their_own_throughput() -> None:
    """40 trials in 40 s, an hour idle, 20 in 10 s: two rates, the gap left out."""
    first = [trial(i, i, 1.0, "a") for i in range(40)]
    second = [trial(40 + i, 3600 + i * 0.5, 0.5, "b") for i in range(20)]
    lines = throughput_lines(first + second)
    assert lines[0] == "throughput: by run (2 runs; the idle time between runs is left out)"
    assert lines[1].startswith("  run 1: 60 finished trials/min (40 in 40.0 s, 2026-12-01 12:00:00 to ")
    assert lines[2].startswith("  run 2: 120 finished trials/min (20 in 10.0 s, 2026-12-01 13:00:00 to ")
    assert len(lines) == 3


def test_one_run_or_plain_optuna_is_one_line() -> None:
    """One launch (or trials without an owner record) give the single-line form."""
    for run in ("a", None):
        lines = throughput_lines([trial(i, i, 1.0, run) for i in range(10)])
        assert lines == ["throughput: 60 finished trials/min (10 in 10.0 s, 2026-12-01 12:00:00 to 2026-12-01 12:00:10)"]


def test_many_runs_show_the_latest() -> None:
    """More than 5 runs: the latest 5, and how many earlier ones were left out."""
    trials = [trial(i, i * 100, 1.0, f"r{i}") for i in range(8)]
    lines = throughput_lines(trials)
    assert lines[1] == "  ... 3 earlier run(s)"
    assert lines[2].startswith("  run 4: ") and lines[-1].startswith("  run 8: ")


def test_no_trials() -> None:
    """An empty study has no rate."""
    assert throughput_lines([]) == ["throughput: n/a (0 finished)"]

"""Tables for the trust features: run seeds, failure kinds, the user's frame, the save directory
rule, and the space / settings comparison between runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from hparam_joblib._errors import ConfigError
from hparam_joblib.config._algorithms import AlgorithmSpec, worker_seed
from hparam_joblib.config._savedir import resolve_save_dir
from hparam_joblib.config._validate import validate
from hparam_joblib.runtime._failures import Frame, kind_of, user_frame
from hparam_joblib.runtime._history import check_space, previous_run, settings_changes, space_of


def test_worker_seeds_differ_per_run_but_not_for_a_fresh_study() -> None:
    """Fresh study: seed + i. Resumed (N trials held): a seed per (seed, N, i), all distinct,
    the same every time; grid and qmc keep the shared seed; no seed stays None."""
    tpe = AlgorithmSpec("sampler", "tpe")
    assert [worker_seed(tpe, 5, i) for i in range(3)] == [5, 6, 7]
    later = {(n, i): worker_seed(tpe, 5, i, n) for n in (4, 8, 10, 20) for i in range(4)}
    assert len(set(later.values())) == len(later)
    assert not set(later.values()) & {5, 6, 7, 8}
    assert later[(10, 1)] == worker_seed(tpe, 5, 1, 10)
    assert all(0 <= s < 2**31 for s in later.values() if s is not None)
    assert worker_seed(AlgorithmSpec("sampler", "grid"), 5, 3, 10) == 5
    assert worker_seed(AlgorithmSpec("sampler", "qmc"), None, 3, 10) == 0
    assert worker_seed(tpe, None, 2, 10) is None


def test_identical_launches_get_their_own_seed_streams() -> None:
    """Launch k of a study (its place in the run history): the first keeps seed + i on a fresh
    study; every later one, even seeing the same trial count (launches started at once), gets
    other seeds, the same for the same (k, N, i) every time."""
    tpe = AlgorithmSpec("sampler", "tpe")
    seeds = {(k, n, i): worker_seed(tpe, 7, i, n, k) for k in range(4) for n in (0, 3) for i in range(2)}
    assert seeds[(0, 0, 0)] == 7 and seeds[(0, 0, 1)] == 8
    assert seeds[(0, 3, 1)] == worker_seed(tpe, 7, 1, 3)  # the first launch's resumed seeds are unchanged
    assert len(set(seeds.values())) == len(seeds)
    assert seeds[(2, 3, 1)] == worker_seed(tpe, 7, 1, 3, 2)
    assert worker_seed(AlgorithmSpec("sampler", "grid"), 7, 1, 3, 2) == 7  # grid/qmc share the seed


@pytest.mark.parametrize(
    ("state", "attrs", "kind"),
    [
        ("PRUNED", {"failure_kind": "error", "failure_reason": "x"}, "error"),
        ("PRUNED", {"failure_reason": "pruned by the pruner at step 3", "pruned_step": 3}, "pruner"),
        ("PRUNED", {"failure_reason": "timeout (trial ran longer than 2 s)"}, "timeout"),
        ("PRUNED", {"failure_reason": "ValueError: boom"}, "error"),
        ("PRUNED", {"failure_reason": "the trial's process was killed by SIGSEGV"}, "error"),
        ("PRUNED", {}, "pruner"),
        ("FAIL", {"failure_reason": "its worker process (pid 4) died while the trial ran"}, "worker_died"),
        ("FAIL", {"failure_reason": "interrupted by SIGINT"}, "interrupted"),
        ("FAIL", {"failure_kind": "interrupted"}, "interrupted"),
        ("COMPLETE", {"failure_kind": "error"}, None),
        ("RUNNING", {}, None),
    ],
)
def test_kind_of(state: str, attrs: dict[str, Any], kind: str | None) -> None:
    """The stored failure_kind wins; older trials are classified from their other attrs."""
    assert kind_of(state, attrs) == kind


def test_user_frame_is_the_last_frame_of_the_users_code() -> None:
    """Frames of hparam_joblib, the standard library and installed packages are skipped."""
    import json

    import hparam_joblib.runtime.trial._isolation as iso

    text = (
        "Traceback (most recent call last):\n"
        f'  File "{iso.__file__}", line 134, in _child_main\n    value = func(config)\n'
        '  File "/home/me/proj/train.py", line 12, in train\n    return fit(config)\n'
        '  File "/home/me/proj/model.py", line 40, in fit\n    json.loads(x)\n'
        f'  File "{json.__file__}", line 346, in loads\n'
        "TypeError: the JSON object must be str\n"
    )
    assert user_frame(text) == Frame("/home/me/proj/model.py", 40, "fit")
    assert user_frame("no traceback") is None


@pytest.mark.parametrize(
    ("config", "save", "expected"),
    [
        ("proj/config/config.yaml", "./optuna_studies", "proj/optuna_studies"),
        ("proj/configs/x.yaml", "./optuna_studies", "proj/optuna_studies"),
        ("proj/exp.yaml", "optuna_studies", "proj/optuna_studies"),
        ("proj/config/sub/exp.yaml", "studies", "proj/config/sub/studies"),
    ],
)
def test_relative_save_dir_belongs_to_the_project(tmp_path: Path, config: str, save: str, expected: str) -> None:
    """Relative to the config's directory, or its parent when that is named config/ or configs/."""
    path = tmp_path / config
    path.parent.mkdir(parents=True)
    path.write_text("n_trials: 1\n")
    got, why = resolve_save_dir(save, path)
    assert got == tmp_path / expected
    assert f"relative to the project directory {got.parent} of " in why
    absolute, why_abs = resolve_save_dir(tmp_path / "abs", path)
    assert absolute == tmp_path / "abs" and "absolute" in why_abs


def _cfg(space: dict[str, Any], **extra: Any) -> Any:
    return validate({"n_trials": 5, "sweep_parameters": space, **extra}, "c.yaml", 2)


def _trials(cfg: Any, n: int = 3) -> list[optuna.trial.FrozenTrial]:
    from hparam_joblib.config._space import suggest_all

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (suggest_all(t, cfg.params), 0.0)[1], n_trials=n)
    return study.trials


X = {"type": "float", "low": 0.0, "high": 1.0}
OPT = {"type": "categorical", "choices": ["adam", "sgd"]}


@pytest.mark.parametrize(
    ("new_space", "message"),
    [
        ({"x": {**X, "high": 2.0}, "opt": OPT}, r"sweep_parameters\.x: changed from float \[0\.0, 1\.0\] to float \[0\.0, 2\.0\]"),
        ({"x": {**X, "log": True, "low": 0.1}, "opt": OPT}, r"sweep_parameters\.x: changed from float \[0\.0, 1\.0\] to float \[0\.1, 1\.0\] log"),
        ({"x": {"type": "int", "low": 0, "high": 1}, "opt": OPT}, r"sweep_parameters\.x: changed from float .* to int \[0, 1\]"),
        ({"x": X, "opt": {**OPT, "choices": ["adam"]}}, r"opt: changed from categorical \['adam', 'sgd'\] to categorical \['adam'\]"),
        ({"x": X}, r"sweep_parameters\.opt: removed \(was categorical \['adam', 'sgd'\]\)"),
        ({"x": X, "opt": OPT, "z": X}, r"sweep_parameters\.z: added \(float \[0\.0, 1\.0\]"),
        ({"x": {**X, "when": {"opt": "sgd"}}, "opt": OPT}, r"sweep_parameters\.x: changed from float \[0\.0, 1\.0\] to .* when"),
    ],
)
def test_space_conflicts_name_both_values_and_a_new_tag(new_space: dict[str, Any], message: str) -> None:
    """Type, range, log, choices, removed, added and condition changes are errors."""
    old = _cfg({"x": X, "opt": OPT})
    held = _trials(old)
    previous = {"space": space_of(old), "config": dict(old.resolved)}
    with pytest.raises(ConfigError, match=message) as info:
        check_space(_cfg(new_space), held, previous, "db.db")
    assert "--set tag=" in str(info.value) and "holds 3 trial(s)" in str(info.value)


def test_same_space_or_empty_study_passes_and_settings_changes_are_listed() -> None:
    """The same space passes (and any space on an empty study); fixed/setting changes listed."""
    old = _cfg({"x": X, "opt": OPT}, data={"epochs": 25}, n_jobs=2)
    check_space(_cfg({"opt": OPT, "x": X}), _trials(old), {"space": space_of(old)}, "db.db")
    check_space(_cfg({"z": X}), [], {"space": space_of(old)}, "db.db")
    new = _cfg({"x": X, "opt": OPT}, data={"epochs": 30, "lr": 0.1}, n_jobs=2)
    changes = settings_changes({"config": dict(old.resolved)}, new)
    assert changes == [("data.epochs", 25, 30), ("data.lr", None, 0.1)]
    assert settings_changes(None, new) == []


def test_previous_run_falls_back_to_the_study_config_of_older_databases() -> None:
    """A study written before the history: its 'config' gives the last space's names."""
    prev = previous_run({"config": {"n_trials": 3, "sweep_parameters": {"x": X}}})
    assert prev is not None and prev["names"] == ["x"] and prev["space"] is None
    assert previous_run({}) is None
    assert previous_run({"runs": [{"run": "a"}, {"run": "b"}]}) == {"run": "b"}

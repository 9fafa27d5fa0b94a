"""Unit tests for parameter specs -> Optuna distributions and trial configs (hparam_joblib.config._space)."""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hparam_joblib.config._schema import ParamSpec
from hparam_joblib.config._space import build_config, describe_space, suggest_all, to_distribution
from hparam_joblib.config._validate import validate

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec(**fields: Any) -> ParamSpec:
    """A ParamSpec built through validation, as the runner gets it."""
    name = fields.pop("name", "p")
    cfg = validate({"n_trials": 1, "sweep_parameters": {name: fields}}, "config.yaml", cpu_count=2)
    return cfg.params[0]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "float", "low": 5e-5, "high": 1e-2, "log": True}, FloatDistribution(5e-5, 1e-2, log=True)),
        ({"type": "float", "low": 0, "high": 1}, FloatDistribution(0.0, 1.0)),
        ({"type": "float", "low": 0, "high": 1, "step": 0.25}, FloatDistribution(0.0, 1.0, step=0.25)),
        ({"type": "float", "low": "1e-3", "high": "1e-1"}, FloatDistribution(1e-3, 1e-1)),
        ({"type": "int", "low": 10, "high": 100, "step": 10}, IntDistribution(10, 100, step=10)),
        ({"type": "int", "low": 1, "high": 8}, IntDistribution(1, 8, step=1)),
        ({"type": "int", "low": 1, "high": 1024, "log": True}, IntDistribution(1, 1024, log=True)),
        ({"type": "int", "low": 1, "high": 1024, "log": True, "step": 1}, IntDistribution(1, 1024, log=True)),
        ({"type": "categorical", "choices": ["Adam", "RMSprop", "SGD"]}, CategoricalDistribution(["Adam", "RMSprop", "SGD"])),
        ({"type": "categorical", "choices": [1, "a", None, False, 2.5]}, CategoricalDistribution([1, "a", None, False, 2.5])),
    ],
)
def test_to_distribution(fields: dict[str, Any], expected: Any) -> None:
    """Each spec maps to the matching Optuna distribution, with log and step carried over."""
    dist = to_distribution(spec(**fields))
    assert dist == expected
    assert type(dist) is type(expected)


@pytest.mark.parametrize(
    ("fixed", "sampled", "expected"),
    [
        ({}, {}, {}),
        ({"a": 1}, {"lr": 0.1}, {"a": 1, "lr": 0.1}),
        ({"hidden_layers": 8}, {"hidden_layers": 4}, {"hidden_layers": 4}),
        ({}, {"model.lr": 0.1}, {"model": {"lr": 0.1}}),
        ({}, {"a.b.c": 1, "a.b.d": 2, "a.e": 3}, {"a": {"b": {"c": 1, "d": 2}, "e": 3}}),
        ({"model": {"depth": 3}}, {"model.lr": 0.1}, {"model": {"depth": 3, "lr": 0.1}}),
        ({"model": {"head": {"w": 1}}}, {"model.head.b": 2}, {"model": {"head": {"w": 1, "b": 2}}}),
        ({"optimizer": "sgd", "tag": "t"}, {"optimizer": "Adam"}, {"optimizer": "Adam", "tag": "t"}),
        ({}, {"flag": None, "on": False}, {"flag": None, "on": False}),
    ],
)
def test_build_config(fixed: dict[str, Any], sampled: dict[str, Any], expected: dict[str, Any]) -> None:
    """Sampled values land at their dotted paths inside a copy of the fixed values."""
    before = copy.deepcopy(fixed)
    config = build_config(fixed, sampled)
    assert config == expected
    assert fixed == before


def test_build_config_never_shares_nested_objects() -> None:
    """Mutating a built config (as a training function may) leaves the fixed mapping untouched."""
    fixed = {"model": {"depth": 3, "layers": [1, 2]}, "tag": "t"}
    before = copy.deepcopy(fixed)
    config = build_config(fixed, {"model.lr": 0.1})
    assert config["model"] is not fixed["model"]
    config["model"]["layers"].append(3)
    config["model"]["depth"] = 99
    assert fixed == before
    assert build_config(fixed, {"model.lr": 0.2}) == {"model": {"depth": 3, "layers": [1, 2], "lr": 0.2}, "tag": "t"}


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return math.isclose(k, round(k), abs_tol=1e-9)


SPACE = [
    {"name": "lr", "type": "float", "low": 5e-5, "high": 1e-2, "log": True},
    {"name": "dropout", "type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    {"name": "momentum", "type": "float", "low": 0.8, "high": 0.99},
    {"name": "num_epochs", "type": "int", "low": 10, "high": 100, "step": 10},
    {"name": "width", "type": "int", "low": 1, "high": 1024, "log": True},
    {"name": "model.depth", "type": "int", "low": -3, "high": 3},
    {"name": "optimizer", "type": "categorical", "choices": ["Adam", "RMSprop", "SGD"]},
    {"name": "flag", "type": "categorical", "choices": [True, False, None]},
]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_suggest_all_in_range_and_on_grid(sampler: str) -> None:
    """suggest_all on a real in-memory study returns in-range values on the step grid, by dotted name."""
    specs = [spec(**dict(fields)) for fields in SPACE]
    chosen = (
        optuna.samplers.RandomSampler(seed=0)
        if sampler == "random"
        else optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    )
    study = optuna.create_study(sampler=chosen)
    seen: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        values = suggest_all(trial, specs)
        seen.append(values)
        assert trial.params == values
        return float(values["lr"])

    study.optimize(objective, n_trials=25)
    assert len(seen) == 25
    for values in seen:
        assert list(values) == [s.name for s in specs]
        assert isinstance(values["lr"], float) and 5e-5 <= values["lr"] <= 1e-2
        assert isinstance(values["dropout"], float) and 0.0 <= values["dropout"] <= 0.5
        assert _on_grid(values["dropout"], 0.0, 0.1)
        assert 0.8 <= values["momentum"] <= 0.99
        assert type(values["num_epochs"]) is int and 10 <= values["num_epochs"] <= 100
        assert values["num_epochs"] % 10 == 0
        assert type(values["width"]) is int and 1 <= values["width"] <= 1024
        assert type(values["model.depth"]) is int and -3 <= values["model.depth"] <= 3
        assert values["optimizer"] in ("Adam", "RMSprop", "SGD")
        assert values["flag"] in (True, False, None)
    assert {v["optimizer"] for v in seen} == {"Adam", "RMSprop", "SGD"}


def test_suggest_all_matches_distributions() -> None:
    """The distributions Optuna records for a trial equal to_distribution of each spec."""
    specs = [spec(**dict(fields)) for fields in SPACE]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: float(len(suggest_all(t, specs))), n_trials=1)
    (trial,) = study.trials
    assert trial.distributions == {s.name: to_distribution(s) for s in specs}


def test_suggest_all_feeds_build_config() -> None:
    """Dotted names sampled by suggest_all nest correctly in the trial's config."""
    specs = [spec(name="model.lr", type="float", low=0.1, high=1), spec(name="model.head.width", type="int", low=1, high=4)]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    trial = study.ask()
    config = build_config({"model": {"depth": 2}, "tag": "t"}, suggest_all(trial, specs))
    assert config["model"]["depth"] == 2
    assert 0.1 <= config["model"]["lr"] <= 1
    assert 1 <= config["model"]["head"]["width"] <= 4
    assert config["tag"] == "t"


def test_describe_space() -> None:
    """describe_space gives one line per parameter, in order."""
    specs = [spec(**dict(fields)) for fields in SPACE[:4] + SPACE[6:7]]
    assert describe_space(specs) == [
        "lr: float [5e-05, 0.01] log",
        "dropout: float [0.0, 0.5] step 0.1",
        "momentum: float [0.8, 0.99]",
        "num_epochs: int [10, 100] step 10",
        "optimizer: categorical ['Adam', 'RMSprop', 'SGD']",
    ]

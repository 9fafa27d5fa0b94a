"""Parameter specs -> Optuna suggestions, and sampled values -> the trial's config dict. No I/O."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hparam_joblib.config._schema import ParamSpec


def to_distribution(spec: ParamSpec) -> BaseDistribution:
    """The Optuna distribution for one parameter spec."""
    if spec.type == "categorical":
        return CategoricalDistribution(list(spec.choices))
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))  # type: ignore[arg-type]
    return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=spec.step)  # type: ignore[arg-type]


def suggest_all(trial: optuna.Trial, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Sample every parameter whose condition holds; returns ``{dotted name: value}``.

    ``specs`` come ordered so that a condition only names parameters sampled before it; a
    parameter whose condition is false is not suggested, so it is absent from the trial's
    params and from the config.
    """
    sampled: dict[str, Any] = {}
    for spec in specs:
        if spec.active(sampled):
            sampled[spec.name] = _suggest(trial, spec)
    return sampled


def _suggest(trial: optuna.Trial, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(spec.name, list(spec.choices))
    if spec.type == "int":
        return trial.suggest_int(
            spec.name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log  # type: ignore[arg-type]
        )
    return trial.suggest_float(spec.name, float(spec.low), float(spec.high), step=spec.step, log=spec.log)  # type: ignore[arg-type]


def build_config(fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
    """Put each sampled value at its dotted path inside a copy of the fixed parameters."""
    config: dict[str, Any] = copy.deepcopy(dict(fixed))
    for name, value in sampled.items():
        node = config
        parts = name.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return config


def describe_space(specs: Iterable[ParamSpec]) -> list[str]:
    """One line per parameter, for --dry-run and the summary."""
    return [f"{spec.name}: {spec.describe()}" for spec in specs]

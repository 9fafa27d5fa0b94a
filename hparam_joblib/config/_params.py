"""Section validator for ``sweep_parameters:``: each parameter's type, range or choices, and
``when`` condition, and where its value lands among the fixed values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hparam_joblib.config._checker import Checker
from hparam_joblib.config._schema import NAME_KEYS, PARAM_TYPES, ParamSpec
from hparam_joblib.config._typos import did_you_mean

_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
_MISSING = object()


def validate_params(section: Any, check: Checker) -> tuple[ParamSpec, ...]:
    """``sweep_parameters:`` in declaration order (empty when absent)."""
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise check.fail(
            "sweep_parameters", f"must be a mapping of parameter name to spec, got {section!r}"
        )
    return tuple(_validate_param(str(name), spec, check) for name, spec in section.items())


def _validate_param(name: str, spec: Any, check: Checker) -> ParamSpec:
    """One parameter: its keys for its type, then its condition and its range or choices."""
    key = f"sweep_parameters.{name}"
    if not name or any(not part for part in name.split(".")):
        raise check.fail(key, "parameter names must be non-empty, dotted names")
    if not isinstance(spec, dict):
        pin = f"; to fix its value for this run instead: --set {name}=VALUE" if spec is None else ""
        raise check.fail(key, f"must be a mapping with a 'type' ({', '.join(PARAM_TYPES)}), got {spec!r}{pin}")
    if "type" not in spec:
        raise check.fail(f"{key}.type", f"is missing; expected one of {list(PARAM_TYPES)}")
    kind = spec["type"]
    if kind not in PARAM_TYPES:
        raise check.fail(f"{key}.type", f"unknown type {kind!r}; expected one of {list(PARAM_TYPES)}")
    unknown = [k for k in spec if k not in _PARAM_KEYS[kind]]
    if unknown:
        raise check.fail(
            f"{key}.{unknown[0]}",
            f"unknown setting for a {kind} parameter; allowed: {', '.join(_PARAM_KEYS[kind])}"
            + did_you_mean(str(unknown[0]), _PARAM_KEYS[kind]),
        )
    when = _validate_when(spec.get("when"), key, check)
    if kind == "categorical":
        return ParamSpec(name=name, type="categorical", choices=_validate_choices(spec, key, check), when=when)
    return dataclasses.replace(_validate_numeric(name, kind, spec, key, check), when=when)


def _validate_when(section: Any, key: str, check: Checker) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``when: {optimizer: SGD}`` or ``{optimizer: [SGD, RMSprop], depth: 2}`` (all must hold)."""
    if section is None:
        return ()
    if not isinstance(section, dict) or not section:
        raise check.fail(
            f"{key}.when", f"must be a mapping of sweep parameter to value(s), e.g. {{optimizer: SGD}}, got {section!r}"
        )
    out = []
    for name, value in section.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise check.fail(f"{key}.when.{name}", "is an empty list; give at least one value")
        out.append((str(name), tuple(values)))
    return tuple(out)


def _validate_choices(spec: Mapping[str, Any], key: str, check: Checker) -> tuple[Any, ...]:
    """A categorical's choices: a non-empty list of distinct scalars (as Optuna compares them)."""
    choices = spec.get("choices")
    if not isinstance(choices, list):
        raise check.fail(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
    if not choices:
        raise check.fail(f"{key}.choices", "is empty; give at least one choice")
    for i, choice in enumerate(choices):
        if choice is not None and not isinstance(choice, (str, int, float, bool)):
            raise check.fail(
                f"{key}.choices",
                f"choice {choice!r} is not a string, number, boolean or null (Optuna stores only those)",
            )
        # Compare with ==, as Optuna does: it stores 1, 1.0 and True as one and the same choice.
        earlier = next((c for c in choices[:i] if c == choice), _MISSING)
        if earlier is not _MISSING:
            same = (
                "" if type(earlier) is type(choice)
                else f" (equal to {earlier!r}; Optuna cannot tell them apart)"
            )
            raise check.fail(f"{key}.choices", f"duplicated choice {choice!r}{same}")
    return tuple(choices)


def _validate_numeric(
    name: str, kind: str, spec: Mapping[str, Any], key: str, check: Checker
) -> ParamSpec:
    """A float or int parameter: bounds, ``log`` and ``step``, consistent with each other."""
    for bound in ("low", "high"):
        if spec.get(bound) is None:
            raise check.fail(f"{key}.{bound}", f"is required for a {kind} parameter")
    low = check.number(spec["low"], f"{key}.low")
    high = check.number(spec["high"], f"{key}.high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise check.fail(f"{key}.log", f"must be true or false, got {log!r}")
    step_raw = spec.get("step")
    step = None if step_raw is None else check.number(step_raw, f"{key}.step")
    if kind == "int":
        for bound, value, raw_value in (("low", low, spec["low"]), ("high", high, spec["high"])):
            if not float(value).is_integer():
                raise check.fail(f"{key}.{bound}", f"must be an integer for an int parameter, got {raw_value!r}")
        if step is not None and not float(step).is_integer():
            raise check.fail(f"{key}.step", f"must be an integer for an int parameter, got {step_raw!r}")
    if high <= low:
        raise check.fail(f"{key}.high", f"({_fmt(high)}) must be > low ({_fmt(low)})", (f"{key}.low",))
    if log and low <= 0:
        raise check.fail(f"{key}.low", f"must be > 0 when log is true, got {_fmt(low)}", (f"{key}.log",))
    if step is not None:
        if step <= 0:
            raise check.fail(f"{key}.step", f"must be > 0, got {_fmt(step)}")
        if log and not (kind == "int" and step == 1):
            raise check.fail(f"{key}.step", "cannot be combined with log: true", (f"{key}.log",))
        if step > high - low:
            raise check.fail(
                f"{key}.step", f"({_fmt(step)}) is larger than high - low ({_fmt(high - low)})",
                (f"{key}.low", f"{key}.high"),
            )
    if kind == "int":
        return ParamSpec(
            name=name, type="int", low=int(low), high=int(high), log=log,
            step=None if step is None else int(step),
        )
    return ParamSpec(name=name, type="float", low=low, high=high, log=log, step=step)


def _fmt(value: float) -> str:
    """A bound in a message, with enough digits to tell it from its neighbour."""
    return f"{value:.12g}"  # plain :g (6 digits) could print "(1) must be > low (1)"


def check_param_paths(params: tuple[ParamSpec, ...], fixed: Mapping[str, Any], check: Checker) -> None:
    """Reject sweep names that collide with each other or would land inside a non-mapping."""
    names = [p.name for p in params]
    for p in params:
        for other in names:
            if other != p.name and other.startswith(p.name + "."):
                raise check.fail(
                    f"sweep_parameters.{other}",
                    f"lies inside sweep parameter {p.name!r}; a value cannot be both a number and a mapping",
                )
        node: Any = fixed
        parts = p.name.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
            if not isinstance(node, Mapping):
                fixed_key = ".".join(parts[: i + 1])
                raise check.fail(
                    f"sweep_parameters.{p.name}",
                    f"{fixed_key} is a fixed value ({node!r}), not a mapping",
                    (fixed_key,),
                )
        if p.name.split(".")[0] in NAME_KEYS:
            raise check.fail(f"sweep_parameters.{p.name}", "experiment_name and tag cannot be swept")

"""Section validators for ``sampler:`` and ``pruner:``: a known type, settings its Optuna class
takes, and values it accepts (each object is built once here, so a bad value is reported now)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hparam_joblib.config import _algorithms
from hparam_joblib.config._algorithms import AlgorithmSpec
from hparam_joblib.config._checker import Checker
from hparam_joblib.config._schema import ParamSpec
from hparam_joblib.config._typos import did_you_mean


def validate_sampler(
    raw: Mapping[str, Any], params: tuple[ParamSpec, ...], n_startup_trials: int,
    directions: tuple[str, ...], check: Checker,
) -> AlgorithmSpec:
    """``sampler:`` (default TPE), with the top-level ``n_startup_trials`` and the grid's points."""
    type_name, body = _block(raw.get("sampler"), "sampler", "tpe", _algorithms.SAMPLERS, check)
    _check_options("sampler", type_name, body, check)
    missing = _algorithms.missing_module(type_name)
    if missing:
        raise check.fail(
            "sampler.type",
            f"the {type_name} sampler needs the {missing!r} package, which is not installed; "
            f"pip install {missing}",
        )
    if len(directions) > 1 and type_name in _algorithms.SINGLE_OBJECTIVE_SAMPLERS:
        raise check.fail(
            "sampler.type", f"the {type_name} sampler optimises one objective; directions has {len(directions)}",
            ("directions",),
        )
    # The top-level n_startup_trials drives TPE (as the guide says), and any other sampler that
    # takes one when the file sets it; a value inside the sampler block wins.
    takes_it = "n_startup_trials" in _algorithms.options_of("sampler", type_name)
    if takes_it and "n_startup_trials" not in body and (type_name == "tpe" or raw.get("n_startup_trials") is not None):
        body["n_startup_trials"] = n_startup_trials
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    if type_name == "grid":
        if not params:
            raise check.fail("sampler.type", "the grid sampler needs at least one sweep parameter")
        cells = []
        for p in params:
            values = p.grid_values()
            if values is None:
                raise check.fail(
                    f"sweep_parameters.{p.name}",
                    "the grid sampler needs a step for a float parameter (or make it int or categorical)",
                    ("sampler.type",),
                )
            cells.append((p.name, values))
        grid = tuple(cells)
    spec = AlgorithmSpec("sampler", type_name, tuple(body.items()), grid)
    _try_build(spec, check)
    return spec


def validate_pruner(section: Any, directions: tuple[str, ...], check: Checker) -> AlgorithmSpec:
    """``pruner:`` (default none); pruning needs one objective."""
    type_name, body = _block(section, "pruner", "none", _algorithms.PRUNERS, check)
    _check_options("pruner", type_name, body, check)
    if type_name != "none" and len(directions) > 1:
        raise check.fail(
            "pruner.type",
            f"pruning needs one objective (Optuna cannot prune a multi-objective study); directions has {len(directions)}",
            ("directions",),
        )
    spec = AlgorithmSpec("pruner", type_name, tuple(body.items()))
    _try_build(spec, check)
    return spec


def _block(section: Any, kind: str, default: str, table: Mapping[str, str], check: Checker) -> tuple[str, dict[str, Any]]:
    """``sampler: tpe`` or ``sampler: {type: tpe, ...}`` -> (type, other keys)."""
    if section is None:
        return default, {}
    if isinstance(section, str):
        section = {"type": section}
    if not isinstance(section, dict):
        raise check.fail(kind, f"must be a mapping with a 'type' ({', '.join(table)}), got {section!r}")
    body = dict(section)
    kind_name = body.pop("type", default)
    if not isinstance(kind_name, str) or kind_name.strip().lower() not in table:
        raise check.fail(f"{kind}.type", f"unknown {kind} {kind_name!r}; expected one of {list(table)}"
                         + did_you_mean(str(kind_name), table))
    for key in body:
        if not isinstance(key, str):
            raise check.fail(kind, f"setting names must be strings, got {key!r}")
    return kind_name.strip().lower(), body


def _check_options(kind: str, type_name: str, body: Mapping[str, Any], check: Checker) -> None:
    """Every key must be a keyword argument of the Optuna class that YAML can express."""
    options = _algorithms.options_of(kind, type_name)
    valid = _algorithms.settable(kind, type_name)
    valid_text = ", ".join(valid) if valid else "none"
    for key, value in body.items():
        where = f"{kind}.{key}"
        if key in _algorithms.MANAGED and key in options:
            raise check.fail(where, f"cannot be set here: {_algorithms.MANAGED[key]}")
        option = options.get(key)
        if option is None:
            raise check.fail(where, f"unknown setting for the {type_name} {kind}; valid: {valid_text}"
                             + _hint(kind, type_name, key, valid))
        if option.types is None:
            raise check.fail(
                where, f"takes a Python object, which a YAML file cannot give; valid: {valid_text}"
            )
        if value is not None and not _algorithms.type_ok(value, option.types):
            names = " or ".join(sorted({t.__name__ for t in option.types}))
            raise check.fail(where, f"must be {names}, got {value!r}")
    missing = [
        name for name, opt in options.items()
        if opt.required and name not in body and name not in _algorithms.MANAGED
    ]
    if missing:
        raise check.fail(kind, f"the {type_name} {kind} needs {', '.join(missing)}")


def _hint(kind: str, type_name: str, key: str, valid: list[str]) -> str:
    """How to switch type when ``key`` belongs to another type; else a typo's likely meaning."""
    table = _algorithms.SAMPLERS if kind == "sampler" else _algorithms.PRUNERS
    owners = [t for t in table if t != type_name and key in _algorithms.settable(kind, t)]
    if not owners:
        return did_you_mean(key, valid)
    return (
        f" ({key} is a setting of the {' / '.join(owners)} {kind}). To switch the {kind}, give only "
        f"its type: {kind}: {type_name} in the file, or --set {kind}.type={type_name} (which drops "
        f"the old type's settings)"
    )


def _try_build(spec: AlgorithmSpec, check: Checker) -> None:
    """Build the object once so that a bad value is reported now, not in every worker."""
    try:
        _algorithms.build(spec, seed=0)
    except (TypeError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise check.fail(spec.kind, f"the {spec.type} {spec.kind} rejects these settings: {message}") from err

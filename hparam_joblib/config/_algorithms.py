"""The samplers and pruners a config may name, what each accepts from YAML, and how to build them.

``_algorithm_checks`` asks this module which keyword arguments a type takes (read from the
Optuna class's signature with :mod:`inspect`) and builds each object once to check the values;
workers build their own (a pruner is consulted in the worker that runs the trial, and a sampler
carries the worker's seed). No I/O.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import optuna

#: Sampler types: YAML name -> Optuna class name.
SAMPLERS: dict[str, str] = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
    "nsgaii": "NSGAIISampler",
    "grid": "GridSampler",
}
#: Pruner types: YAML name -> Optuna class name.
PRUNERS: dict[str, str] = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "threshold": "ThresholdPruner",
}
#: Optional packages a sampler imports only when it samples: (module, pip package).
REQUIREMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "cmaes": (("cmaes", "cmaes"),),
    "gp": (("torch", "torch"), ("scipy", "scipy")),
    "qmc": (("scipy", "scipy"),),
}
#: Samplers that cannot optimise several objectives.
SINGLE_OBJECTIVE_SAMPLERS: tuple[str, ...] = ("cmaes",)
#: Samplers whose workers must share one seed: they map trial numbers to points (grid) or
#: share a sequence (qmc), so per-worker seeds would make workers disagree on the points.
SHARED_SEED_SAMPLERS: tuple[str, ...] = ("grid", "qmc")
#: Arguments the YAML block may not set, and why.
MANAGED: dict[str, str] = {
    "seed": "set the top-level seed instead (workers derive their seeds from it)",
    "search_space": "the grid is derived from sweep_parameters",
}


@dataclass(frozen=True)
class AlgorithmSpec:
    """A validated ``sampler:`` or ``pruner:`` block.

    ``grid`` holds the grid sampler's search space, ``((name, (values...)), ...)``.
    """

    kind: str
    type: str
    options: tuple[tuple[str, Any], ...] = ()
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = field(default=(), repr=False)

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments for the Optuna class."""
        return dict(self.options)

    def describe(self) -> str:
        """``tpe (n_startup_trials=10)``: one line for --dry-run."""
        shown = [f"{k}={v!r}" for k, v in self.options]
        if self.grid:
            points = 1
            for _, values in self.grid:
                points *= len(values)
            shown.append(f"{points} grid points")
        return f"{self.type} ({', '.join(shown)})" if shown else self.type


def optuna_class(kind: str, type_name: str) -> type:
    """The Optuna class for a sampler or pruner type."""
    if kind == "sampler":
        return cast(type, getattr(optuna.samplers, SAMPLERS[type_name]))
    return cast(type, getattr(optuna.pruners, PRUNERS[type_name]))


def _yaml_types(hint: Any) -> tuple[type, ...] | None:
    """The Python types a YAML value may have for a resolved type hint; None when YAML cannot
    express it (a callable, a sampler object, ...)."""
    if hint is None or hint is type(None):
        return (type(None),)
    if hint in (int, bool, str):
        return (hint,)
    if hint is float:
        return (int, float)
    origin = typing.get_origin(hint)
    if hint in (dict, Mapping) or origin in (dict, Mapping):
        return (dict,)
    if origin in (typing.Union, types.UnionType):
        allowed: tuple[type, ...] = ()
        for arg in typing.get_args(hint):
            found = _yaml_types(arg)
            if found is None:
                return None
            allowed += found
        return allowed
    return None


def _annotation_types(annotation: Any, module: str) -> tuple[type, ...] | None:
    """The YAML types for one parameter's annotation. Optuna's modules use postponed annotations
    (strings): each is evaluated in its module's namespace, as :func:`typing.get_type_hints`
    does, but one at a time, so that a name imported only for type checking makes that one
    parameter unsettable instead of failing them all."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, vars(sys.modules[module]), {})  # Optuna's own annotation text
        except Exception:  # noqa: BLE001 - a TYPE_CHECKING-only name, a newer syntax: not settable
            return None
    return _yaml_types(annotation)


@dataclass(frozen=True)
class Option:
    """One keyword argument of an Optuna class, as YAML sees it."""

    name: str
    types: tuple[type, ...] | None  # None: not settable from YAML
    required: bool


def options_of(kind: str, type_name: str) -> dict[str, Option]:
    """Every keyword argument of the class (``self``, ``*args``, ``**kwargs`` left out)."""
    cls = optuna_class(kind, type_name)
    params = inspect.signature(cls).parameters.values()
    return {
        p.name: Option(p.name, _annotation_types(p.annotation, cls.__module__), p.default is inspect.Parameter.empty)
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def settable(kind: str, type_name: str) -> list[str]:
    """The argument names a YAML block may set for this type."""
    return [
        name for name, opt in options_of(kind, type_name).items()
        if opt.types is not None and name not in MANAGED
    ]


def type_ok(value: Any, types: tuple[type, ...]) -> bool:
    """True when ``value`` fits ``types`` (a YAML ``true`` is not an int, ``1`` is a float)."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def missing_module(type_name: str) -> str | None:
    """The pip package a sampler needs and this environment lacks, or None."""
    for module, package in REQUIREMENTS.get(type_name, ()):
        if importlib.util.find_spec(module) is None:
            return package
    return None


def build(spec: AlgorithmSpec, seed: int | None = None) -> Any:
    """The Optuna sampler or pruner for ``spec`` (``seed`` only for samplers)."""
    cls = optuna_class(spec.kind, spec.type)
    kwargs = spec.kwargs
    if spec.kind == "sampler":
        kwargs["seed"] = seed
        if spec.type == "grid":
            kwargs["search_space"] = {name: list(values) for name, values in spec.grid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(**kwargs)


def worker_seed(
    spec: AlgorithmSpec, seed: int | None, worker_index: int, trials_before: int = 0, launch_number: int = 0,
) -> int | None:
    """The sampler seed of worker loop ``worker_index`` of launch ``launch_number`` (its
    position in the study's run history), started when the study held ``trials_before`` trials.

    The study's first launch on a fresh study: ``seed + worker_index``, so a seeded n_jobs=1
    search samples what ``optuna.create_study(sampler=...(seed=seed))`` would. Otherwise a seed
    mixed from ``(seed, trials_before, worker_index)`` and, for every launch after the first,
    ``launch_number``: a resumed study never replays an earlier run's sequences, and identical
    launches running at once (a SLURM array, two terminals) never share one, since each gets
    its own number; the same commands in the same order on a fresh study give the same seeds.
    Grid and QMC workers share ``seed`` on every run: those samplers skip the points the
    study already holds by themselves (unvisited grid points, the next QMC index).
    """
    if spec.type in SHARED_SEED_SAMPLERS:
        return 0 if seed is None else seed
    if seed is None:
        return None
    if trials_before <= 0 and launch_number <= 0:
        return seed + worker_index
    key = f"hparam_joblib:{seed}:{trials_before}:{worker_index}"
    if launch_number > 0:
        key += f":launch{launch_number}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


#: No ``pruner:`` block.
DEFAULT_PRUNER = AlgorithmSpec("pruner", "none")
#: No ``sampler:`` block: TPE with the top-level n_startup_trials' default.
DEFAULT_SAMPLER = AlgorithmSpec("sampler", "tpe", (("n_startup_trials", 10),))



"""Section validators for the study settings that are neither the space nor the algorithms.

``direction(s)``, the base ``seed``, ``backend`` / ``dask_scheduler``, ``storage``,
``trial_output``, ``tracking``, the stop rules and ``verbosity``: each a function that returns
its validated value or raises the first problem it finds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hparam_joblib.config._checker import Checker, as_int
from hparam_joblib.config._schema import (
    BACKENDS,
    DIRECTIONS,
    TRIAL_OUTPUTS,
    VERBOSITIES,
    MlflowSpec,
    StopRules,
)
from hparam_joblib.config._typos import did_you_mean
from hparam_joblib.storage._location import StorageSpec, parse_storage

_SCHEDULER_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")


def validate_directions(raw: Mapping[str, Any], check: Checker) -> tuple[str, ...]:
    """``direction: minimize`` or ``directions: [minimize, maximize]`` (not both)."""
    if raw.get("directions") is None:
        direction = raw.get("direction", "minimize")
        if not isinstance(direction, str) or direction.strip().lower() not in DIRECTIONS:
            raise check.fail("direction", f"must be one of {list(DIRECTIONS)}, got {direction!r}")
        return (direction.strip().lower(),)
    if raw.get("direction") is not None:
        raise check.fail(
            "directions", "give either direction (one objective) or directions (several), not both",
            ("direction",),
        )
    directions = raw["directions"]
    if not isinstance(directions, list) or not directions:
        raise check.fail(
            "directions", f"must be a non-empty list of {' / '.join(DIRECTIONS)}, got {directions!r}"
        )
    out = []
    for i, item in enumerate(directions):
        if not isinstance(item, str) or item.strip().lower() not in DIRECTIONS:
            raise check.fail(f"directions[{i}]", f"must be one of {list(DIRECTIONS)}, got {item!r}")
        out.append(item.strip().lower())
    return tuple(out)


def base_seed(raw: Mapping[str, Any], check: Checker) -> tuple[Mapping[str, Any], int | None]:
    """The base seed: the top-level ``seed``, or Optuna's own ``sampler: {seed: N}`` (same
    meaning: worker i samples with N + i); both set and different is an error. Returns the
    mapping without ``sampler.seed`` (the sampler is built with each worker's seed)."""
    top = None if raw.get("seed") is None else check.integer(raw, "seed", None, 0)
    sampler = raw.get("sampler")
    if not isinstance(sampler, dict) or "seed" not in sampler:
        return raw, top
    inner = None if sampler["seed"] is None else as_int(sampler["seed"])
    if sampler["seed"] is not None and (inner is None or inner < 0):
        raise check.fail("sampler.seed", f"must be an integer >= 0, got {sampler['seed']!r}")
    if inner is not None and top is not None and top != inner:
        raise check.fail(
            "sampler.seed", f"is {inner} but the top-level seed is {top}; they mean the same (the base "
            "seed: worker i samples with seed + i): set one of them", ("seed",),
        )
    out = dict(raw)
    out["sampler"] = {k: v for k, v in sampler.items() if k != "seed"}
    if top is None and inner is not None:
        out["seed"] = inner  # stored and shown as the one base seed
    return out, top if top is not None else inner


def validate_backend(raw: Mapping[str, Any], check: Checker) -> tuple[str, str]:
    """``backend: loky`` (default) or ``dask``, and ``dask_scheduler``: ``local`` or an address."""
    backend = raw.get("backend", "loky")
    if backend is None:
        backend = "loky"
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise check.fail("backend", f"must be one of {list(BACKENDS)}, got {backend!r}")
    scheduler = raw.get("dask_scheduler", "local")
    if scheduler is None:
        scheduler = "local"
    text = scheduler.strip() if isinstance(scheduler, str) else ""
    if text != "local" and not (text.startswith(_SCHEDULER_SCHEMES) and len(text.split("://", 1)[1]) > 0):
        raise check.fail(
            "dask_scheduler",
            f"must be 'local' or a scheduler address such as tcp://host:8786, got {scheduler!r}",
        )
    return backend.strip().lower(), text


def validate_storage(value: Any, check: Checker) -> StorageSpec:
    """``storage:``: the SQLite file (default), a journal file or a database server URL."""
    storage = parse_storage(value)
    if isinstance(storage, str):
        raise check.fail("storage", storage)
    return storage


def validate_trial_output(raw: Mapping[str, Any], check: Checker) -> str:
    """``trial_output: file`` (default) or ``terminal``."""
    trial_output = str(raw.get("trial_output") or "file").strip().lower()
    if trial_output not in TRIAL_OUTPUTS:
        raise check.fail("trial_output", f"must be one of {list(TRIAL_OUTPUTS)}, got {raw['trial_output']!r}")
    return trial_output


def validate_tracking(value: Any, check: Checker) -> MlflowSpec | None:
    """``tracking: {mlflow: {tracking_uri: ..., experiment_name: ...}}`` (or absent / null)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"mlflow"}:
        raise check.fail("tracking", f"must be a mapping with the key mlflow, got {value!r}")
    spec = value.get("mlflow")
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise check.fail("tracking.mlflow", f"must be a mapping (tracking_uri, experiment_name), got {spec!r}")
    unknown = sorted(set(spec) - {"tracking_uri", "experiment_name"})
    if unknown:
        raise check.fail(f"tracking.mlflow.{unknown[0]}", "unknown key; expected tracking_uri or experiment_name"
                         + did_you_mean(str(unknown[0]), ("tracking_uri", "experiment_name")))
    uri = spec.get("tracking_uri")
    if not isinstance(uri, str) or not uri.strip():
        raise check.fail(
            "tracking.mlflow.tracking_uri",
            f"is required: a tracking server URL (http://host:5000) or sqlite:///FILE, got {uri!r}",
        )
    uri = uri.strip()
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        raise check.fail(
            "tracking.mlflow.tracking_uri", f"must be a URL such as http://127.0.0.1:5000 or sqlite:///mlflow.db, got {uri!r}"
        )
    name = spec.get("experiment_name", "")
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise check.fail("tracking.mlflow.experiment_name", f"must be a string, got {name!r}")
    return MlflowSpec(tracking_uri=uri, experiment_name=name.strip())


def validate_stop_rules(raw: Mapping[str, Any], directions: tuple[str, ...], check: Checker) -> StopRules:
    """``timeout``, ``stop_grace``, ``stop_no_improvement``, ``stop_at_value``."""
    timeout = check.seconds(raw, "timeout")
    grace = check.seconds(raw, "stop_grace", 60.0)
    no_improvement = check.optional_integer(raw, "stop_no_improvement", 1)
    at_value = None if raw.get("stop_at_value") is None else check.number(raw["stop_at_value"], "stop_at_value")
    if len(directions) > 1:
        for key, value in (("stop_no_improvement", no_improvement), ("stop_at_value", at_value)):
            if value is not None:
                raise check.fail(
                    key, f"needs one objective (there is no single best value); directions has {len(directions)}",
                    ("directions",),
                )
    return StopRules(timeout=timeout, grace=grace, no_improvement=no_improvement, at_value=at_value)


def validate_verbosity(value: Any, check: Checker) -> str:
    """``verbosity:`` one of quiet, normal (default), verbose."""
    if value is None:
        return "normal"
    if not isinstance(value, str) or value.strip().lower() not in VERBOSITIES:
        raise check.fail("verbosity", f"must be one of {list(VERBOSITIES)}, got {value!r}")
    return value.strip().lower()

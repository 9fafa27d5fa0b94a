"""``validate``: a raw mapping -> a :class:`SearchConfig`, one section validator per concern.

The only place that checks user input; everything downstream trusts its output. The sections are
checked in a fixed order, so the same input always reports the same (first) problem.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hparam_joblib.config._algorithm_checks import validate_pruner, validate_sampler
from hparam_joblib.config._checker import Checker
from hparam_joblib.config._conditions import check_conditions
from hparam_joblib.config._devices import GpuDetector, n_jobs_is_auto, validate_devices
from hparam_joblib.config._enqueue import validate_enqueue
from hparam_joblib.config._overrides import SWEEP_KEY, Override
from hparam_joblib.config._params import check_param_paths, validate_params
from hparam_joblib.config._schema import STUDY_KEYS, SearchConfig
from hparam_joblib.config._settings import (
    base_seed,
    validate_backend,
    validate_directions,
    validate_stop_rules,
    validate_storage,
    validate_tracking,
    validate_trial_output,
    validate_verbosity,
)
from hparam_joblib.storage._location import StorageSpec, redact_url


def validate(
    raw: Mapping[str, Any], source: str, cpu_count: int, overrides: tuple[Override, ...] = (),
    detect_gpus: GpuDetector | None = None,
) -> SearchConfig:
    """Turn a raw mapping into a :class:`SearchConfig`, or raise the first problem found.

    ``detect_gpus`` says what ``gpus: auto`` means; None: this machine's devices, asked then.
    """
    check = Checker(source, overrides)
    experiment_name = check.name(raw, "experiment_name", Path(source).stem or "experiment")
    tag = check.name(raw, "tag", "default")
    directions = validate_directions(raw, check)
    gpus, n_jobs = validate_devices(raw, cpu_count, check, detect_gpus)
    n_trials = check.integer(raw, "n_trials", None, 1)
    n_startup_trials = check.integer(raw, "n_startup_trials", 10, 0)
    raw, seed = base_seed(raw, check)
    trial_timeout = check.seconds(raw, "trial_timeout")
    lock_timeout = check.seconds(raw, "lock_timeout", 120.0)
    params = check_conditions(validate_params(raw.get(SWEEP_KEY), check), check)
    backend, dask_scheduler = validate_backend(raw, check)
    storage = validate_storage(raw.get("storage"), check)
    max_worker_deaths = check.integer(raw, "max_worker_deaths", 3, 1)
    max_trial_errors = check.integer(raw, "max_trial_errors", 5, 0)
    heartbeat_interval = check.seconds(raw, "heartbeat_interval", 10.0)
    trials_per_process = check.optional_integer(raw, "trials_per_process", 1)
    threads_per_trial = check.optional_integer(raw, "threads_per_trial", 1)
    trial_output = validate_trial_output(raw, check)
    mlflow = validate_tracking(raw.get("tracking"), check)
    allow_network_filesystem = check.boolean(raw, "allow_network_filesystem", False)
    fixed = _fixed_values(raw, experiment_name, tag)
    check_param_paths(params, fixed, check)
    sampler = validate_sampler(raw, params, n_startup_trials, directions, check)
    # Keyword arguments are evaluated in order: the last four sections are checked here.
    return SearchConfig(
        source=source, experiment_name=experiment_name, tag=tag, fixed=fixed,
        resolved=_redacted(raw, storage),
        direction=directions[0], directions=directions,  # type: ignore[arg-type]
        n_jobs=n_jobs, n_jobs_auto=n_jobs_is_auto(raw), gpus=gpus, n_trials=n_trials, n_startup_trials=n_startup_trials, seed=seed,
        trial_timeout=trial_timeout, lock_timeout=lock_timeout, heartbeat_interval=heartbeat_interval,
        params=params, sampler=sampler,
        backend=backend, dask_scheduler=dask_scheduler, storage=storage,  # type: ignore[arg-type]
        max_worker_deaths=max_worker_deaths, max_trial_errors=max_trial_errors,
        trials_per_process=trials_per_process, threads_per_trial=threads_per_trial,
        trial_output=trial_output, mlflow=mlflow,  # type: ignore[arg-type]
        allow_network_filesystem=allow_network_filesystem,
        pruner=validate_pruner(raw.get("pruner"), directions, check),
        enqueue=validate_enqueue(raw.get("enqueue"), params, sampler, check),
        stop=validate_stop_rules(raw, directions, check),
        verbosity=validate_verbosity(raw.get("verbosity"), check),  # type: ignore[arg-type]
    )


def _fixed_values(raw: Mapping[str, Any], experiment_name: str, tag: str) -> dict[str, Any]:
    """What every trial's config starts from: the keys that are not study settings, and the names."""
    fixed = {k: copy.deepcopy(v) for k, v in raw.items() if k not in STUDY_KEYS}
    fixed["experiment_name"] = experiment_name
    fixed["tag"] = tag
    return fixed


def _redacted(raw: Mapping[str, Any], storage: StorageSpec) -> dict[str, Any]:
    """A deep copy of the config with any storage password hidden (it is stored and printed)."""
    resolved = copy.deepcopy(dict(raw))
    if storage.kind == "postgresql":
        resolved["storage"] = redact_url(storage.url)
    return resolved

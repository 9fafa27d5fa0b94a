"""The validated configuration: the reserved keys, and the frozen objects a search runs from.

Plain data with no checks of their own (``_validate`` builds them from the YAML); everything
downstream trusts them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hparam_joblib.config import _algorithms
from hparam_joblib.config._algorithms import AlgorithmSpec
from hparam_joblib.storage._location import StorageSpec

#: Study settings: read by hparam_joblib, not passed to the training function.
STUDY_KEYS: tuple[str, ...] = (
    "direction",
    "directions",
    "n_jobs",
    "n_trials",
    "n_startup_trials",
    "sweep_parameters",
    "seed",
    "trial_timeout",
    "lock_timeout",
    "sampler",
    "pruner",
    "enqueue",
    "backend",
    "dask_scheduler",
    "storage",
    "gpus",
    "max_worker_deaths",
    "heartbeat_interval",
    "timeout",
    "stop_grace",
    "stop_no_improvement",
    "stop_at_value",
    "verbosity",
    "max_trial_errors",
    "trials_per_process",
    "threads_per_trial",
    "trial_output",
    "tracking",
    "not_settings",
    "allow_network_filesystem",
)
#: Lists the user's own top-level keys whose names look like a setting (see ``_typos``).
ALLOW_KEY = "not_settings"
#: ``verbosity:`` values (``--quiet`` / ``--verbose`` win over the file).
VERBOSITIES: tuple[str, ...] = ("quiet", "normal", "verbose")
#: Where a trial's stdout and stderr go: its log file only, or also the terminal (prefixed).
TRIAL_OUTPUTS: tuple[str, ...] = ("file", "terminal")
BACKENDS: tuple[str, ...] = ("loky", "dask")
#: Naming keys: reserved (they name the study), and passed to the function like fixed values.
NAME_KEYS: tuple[str, ...] = ("experiment_name", "tag")
RESERVED_KEYS: tuple[str, ...] = NAME_KEYS + STUDY_KEYS

PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")


@dataclass(frozen=True)
class ParamSpec:
    """One sweep parameter, validated.

    ``name`` is the dotted path where the sampled value lands in the trial's config. ``when``
    is its condition, ``((other parameter, (accepted values...)), ...)``: the parameter is
    sampled only when every named parameter was sampled with one of its accepted values.
    """

    name: str
    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def describe(self) -> str:
        """A one-line human description of the range (and the condition, if any)."""
        if self.type == "categorical":
            text = f"categorical {list(self.choices)}"
        else:
            extra = " log" if self.log else ""
            extra += f" step {self.step}" if self.step is not None else ""
            text = f"{self.type} [{self.low}, {self.high}]{extra}"
        if self.when:
            text += f" when {self.condition_text()}"
        return text

    def condition_text(self) -> str:
        """``optimizer == 'SGD' and depth in [2, 3]``; empty without a condition."""
        return " and ".join(
            f"{name} == {values[0]!r}" if len(values) == 1 else f"{name} in {list(values)}"
            for name, values in self.when
        )

    def active(self, sampled: Mapping[str, Any]) -> bool:
        """True when the condition holds for the values sampled so far (absent = false)."""
        return all(
            name in sampled and among(sampled[name], values) for name, values in self.when
        )

    def contains(self, value: Any) -> bool:
        """True when ``value`` is one this parameter can take (for enqueued values)."""
        if self.type == "categorical":
            return among(value, self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        if not (self.low <= value <= self.high):  # type: ignore[operator]
            return False
        if self.step is not None:
            k = (value - self.low) / self.step  # type: ignore[operator]
            return abs(k - round(k)) < 1e-8
        return True

    def grid_values(self) -> tuple[Any, ...] | None:
        """Every value, for the grid sampler; None for a float without a step."""
        if self.type == "categorical":
            return self.choices
        if self.type == "int":
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))  # type: ignore[arg-type]
        if self.step is None:
            return None
        n = math.floor((self.high - self.low) / self.step + 1e-8)  # type: ignore[operator]
        return tuple(round(self.low + i * self.step, 12) for i in range(n + 1))  # type: ignore[operator]


def among(value: Any, values: tuple[Any, ...]) -> bool:
    """``value in values`` where True is not 1 (YAML tells them apart; so do we)."""
    return any(v == value and isinstance(v, bool) == isinstance(value, bool) for v in values)


@dataclass(frozen=True)
class StopRules:
    """When a run stops before the study holds ``n_trials`` finished trials (each rule counts
    from the start of this run, so running the same command again continues the search).

    Attributes:
        timeout: seconds after the run started when no new trial starts; None: no limit.
        grace: seconds trials still running at a stop may take to finish; then they are
            stopped and marked FAIL (not counted, re-run by the next run).
        no_improvement: stop once this many trials finished in a row in this run without
            beating the best value (the study's best when the run started counts); None: off.
        at_value: stop once a trial of this run completes with a value at least this good
            (>= when maximizing, <= when minimizing); None: off.
    """

    timeout: float | None = None
    grace: float = 60.0
    no_improvement: int | None = None
    at_value: float | None = None

    @property
    def active(self) -> bool:
        """True when any rule is set."""
        return self.timeout is not None or self.no_improvement is not None or self.at_value is not None


@dataclass(frozen=True)
class MlflowSpec:
    """``tracking.mlflow`` from the YAML."""

    tracking_uri: str
    #: The MLflow experiment; empty: the study name.
    experiment_name: str = ""


@dataclass(frozen=True)
class SearchConfig:
    """The validated configuration of one search."""

    source: str
    experiment_name: str
    tag: str
    direction: Literal["minimize", "maximize"]
    n_jobs: int
    n_trials: int
    n_startup_trials: int
    seed: int | None
    trial_timeout: float | None
    lock_timeout: float
    params: tuple[ParamSpec, ...]
    fixed: Mapping[str, Any]
    resolved: Mapping[str, Any] = field(repr=False)
    directions: tuple[str, ...] = ("minimize",)
    sampler: AlgorithmSpec = _algorithms.DEFAULT_SAMPLER
    pruner: AlgorithmSpec = _algorithms.DEFAULT_PRUNER
    enqueue: tuple[Mapping[str, Any], ...] = ()
    #: ``n_jobs: auto``: n_jobs is the cores (or devices); a trial starts only when memory holds it.
    n_jobs_auto: bool = False
    #: Where the worker loops run: ``loky`` (this machine) or ``dask`` (a dask.distributed cluster).
    backend: Literal["loky", "dask"] = "loky"
    #: ``local`` (a LocalCluster of n_jobs single-threaded worker processes) or a scheduler address.
    dask_scheduler: str = "local"
    storage: StorageSpec = field(default_factory=StorageSpec)
    #: One device per concurrently running trial (``CUDA_VISIBLE_DEVICES``); empty: no pinning.
    gpus: tuple[str, ...] = ()
    #: Worker processes that may die in a row, without a trial finishing in between, before the
    #: search stops with an error.
    max_worker_deaths: int = 3
    #: Seconds between liveness records of a running trial (database servers only); a RUNNING
    #: trial silent for 3 intervals is failed and re-run.
    heartbeat_interval: float = 10.0
    #: Stop rules (see :class:`StopRules`): none set by default.
    stop: StopRules = field(default_factory=StopRules)
    #: ``quiet``, ``normal`` or ``verbose`` (the ``verbosity`` key; ``--quiet``/``--verbose``).
    verbosity: Literal["quiet", "normal", "verbose"] = "normal"
    #: The search stops (exit 1) when the first this-many trials a run finishes all failed by
    #: an error, none completing (broken code); 0 turns the rule off.
    max_trial_errors: int = 5
    #: Trials a warm trial process runs before it is replaced (None: it is kept until it dies).
    trials_per_process: int | None = None
    #: Threads per trial for OpenMP/BLAS/numexpr/PyTorch; None: cores // trials running at once.
    threads_per_trial: int | None = None
    #: ``file``: each trial's output goes to its log file; ``terminal``: also shown, prefixed.
    trial_output: Literal["file", "terminal"] = "file"
    #: ``tracking.mlflow``: where each trial is logged as a nested MLflow run, or None.
    mlflow: MlflowSpec | None = None
    #: A SQLite or journal file on a network filesystem (NFS, Lustre, ...) is refused unless
    #: this is true (then it is used from one machine only; see ``storage/_netfs``).
    allow_network_filesystem: bool = False

    @property
    def multi_objective(self) -> bool:
        """True with several ``directions``."""
        return len(self.directions) > 1

    @property
    def study_name(self) -> str:
        """``<experiment_name>_<tag>``: the study name and the database file stem."""
        return f"{self.experiment_name}_{self.tag}"

    def fixed_copy(self) -> dict[str, Any]:
        """A deep copy of the fixed parameters (what every trial's config starts from)."""
        return copy.deepcopy(dict(self.fixed))


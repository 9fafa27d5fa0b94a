"""Load the YAML file, apply ``--set`` overrides, validate once into frozen objects.

The only module that checks user input; everything downstream trusts its output. Nothing here
touches the study database or creates a file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hparam_joblib._errors import ConfigError, OverrideError
from hparam_joblib.config import _algorithms
from hparam_joblib.config._algorithms import AlgorithmSpec
from hparam_joblib.config._overrides import SWEEP_KEY, Override, apply_overrides, resolve_path
from hparam_joblib.config._yaml import load_yaml
from hparam_joblib.runtime._tracking import MlflowSpec
from hparam_joblib.runtime.loops._gpus import detect_gpus
from hparam_joblib.storage._location import StorageSpec, parse_storage, redact_url

logger = logging.getLogger("hparam_joblib")

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
)
#: ``verbosity:`` values (``--quiet`` / ``--verbose`` win over the file).
VERBOSITIES: tuple[str, ...] = ("quiet", "normal", "verbose")
#: Where a trial's stdout and stderr go: its log file only, or also the terminal (prefixed).
TRIAL_OUTPUTS: tuple[str, ...] = ("file", "terminal")
BACKENDS: tuple[str, ...] = ("loky", "dask")
_SCHEDULER_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")
#: Naming keys: reserved (they name the study), and passed to the function like fixed values.
NAME_KEYS: tuple[str, ...] = ("experiment_name", "tag")
RESERVED_KEYS: tuple[str, ...] = NAME_KEYS + STUDY_KEYS

PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")
_NAME_FORBIDDEN = ("/", "\\", "\x00")
_MISSING = object()


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
            name in sampled and _among(sampled[name], values) for name, values in self.when
        )

    def contains(self, value: Any) -> bool:
        """True when ``value`` is one this parameter can take (for enqueued values)."""
        if self.type == "categorical":
            return _among(value, self.choices)
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


def _among(value: Any, values: tuple[Any, ...]) -> bool:
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


def resolve_config_path(config_path: str | os.PathLike[str], defining_file: str | None) -> Path:
    """Find the configuration file.

    Tried in order: the path as given (absolute, or relative to the working directory);
    ``config/<path>`` under the working directory; ``config/<path>`` beside the file that
    defines the decorated function; ``<path>`` beside that file.

    Raises:
        ConfigError: no candidate exists; the message lists every place tried.
    """
    given = Path(config_path)
    candidates = [given]
    if not given.is_absolute():
        candidates.append(Path("config") / given)
        if defining_file:
            here = Path(defining_file).resolve().parent
            candidates += [here / "config" / given, here / given]
    seen: list[Path] = []
    for candidate in candidates:
        if candidate in seen:
            continue
        seen.append(candidate)
        if candidate.is_file():
            return candidate
    # Absolute paths: a relative one means nothing without the working directory.
    tried = ", ".join(str(p if p.is_absolute() else Path.cwd() / p) for p in seen)
    raise ConfigError(str(config_path), "", f"config file not found; tried: {tried}")


def read_raw(path: Path) -> dict[str, Any]:
    """Read the YAML file into a mapping (safe loader only).

    Raises:
        ConfigError: unreadable file, YAML syntax error (with line and column), a tag that the
            safe loader refuses (``!!python/object``), or a top level that is not a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", f"cannot read the file ({err})") from err
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (err.problem or err.context or "invalid YAML").strip()
        kind = "YAML syntax error"
        if isinstance(err, yaml.constructor.ConstructorError):  # well-formed, but not allowed
            kind = "YAML error"
            if "could not determine a constructor" in problem:
                problem += " (only plain YAML is allowed; Python tags are never executed)"
        raise ConfigError(path, "", f"{kind}{where}: {problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(path, "", f"YAML error: {str(err).splitlines()[0]}") from err
    if data is None:
        raise ConfigError(path, "", "the file is empty; expected a mapping of settings")
    if not isinstance(data, dict):
        raise ConfigError(
            path, "", f"the top level must be a mapping of key: value, got a {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(path, str(key), "keys must be strings")
    return data


def load_config(
    path: Path, overrides: list[Override], cpu_count: int
) -> tuple[SearchConfig, list[str]]:
    """Read, override and validate a configuration.

    Args:
        path: the YAML file (already resolved).
        overrides: parsed ``--set`` items, applied before validation.
        cpu_count: what ``n_jobs: -1`` means on this machine.

    Returns:
        The validated configuration, and notes for the user (keys created by ``--set``,
        likely typos of reserved keys).

    Raises:
        ConfigError: anything wrong in the file or the overrides.
    """
    raw = read_raw(path)
    pins, rest = split_pins(raw, overrides)
    check_new_key_typos(raw, rest, path)
    resolved, created = apply_overrides(raw, rest)
    # Documented settings (and anything under them) are never "new keys", in the file or not.
    notes = [
        f"--set {key}: not in {path.name}; added it as a new key"
        for key in created if key.split(".")[0] not in RESERVED_KEYS
    ]
    resolved, pin_notes = apply_pins(resolved, pins, _Checker(str(path), tuple(overrides)))
    notes += pin_notes
    notes += _typo_notes(resolved, path)
    cfg = validate(resolved, str(path), cpu_count, tuple(overrides))
    if cfg.sampler.type == "grid":
        points = math.prod(len(values) for _, values in cfg.sampler.grid)
        if points < cfg.n_trials:
            notes.append(
                f"{path.name}: the grid has {points} points but n_trials is {cfg.n_trials}; "
                f"the last {cfg.n_trials - points} trials repeat grid points"
            )
    return cfg, notes


def split_pins(raw: Mapping[str, Any], overrides: list[Override]) -> tuple[list[Override], list[Override]]:
    """The ``--set`` items that name a sweep parameter of the file (``model.solver=sgd`` with
    ``model.solver`` swept): they pin it for this run. Returns (pins, the other items)."""
    sweep = raw.get(SWEEP_KEY)
    names = {str(k) for k in sweep} if isinstance(sweep, dict) else set()
    pins = [o for o in overrides if o.path[0] != SWEEP_KEY and ".".join(o.path) in names]
    return pins, [o for o in overrides if o not in pins]


def apply_pins(
    raw: dict[str, Any], pins: list[Override], check: _Checker
) -> tuple[dict[str, Any], list[str]]:
    """Fix each pinned sweep parameter: out of ``sweep_parameters`` (and the ``enqueue``
    entries), its value at its dotted path among the fixed values, so every trial's config
    has it. A parameter whose condition names a pinned one keeps the condition's other parts
    when the pinned value meets it, and leaves the space when it does not (it would never be
    sampled). Returns the new mapping and one note per change."""
    if not pins:
        return raw, []
    out = copy.deepcopy(raw)
    sweep = out.get(SWEEP_KEY)
    notes = []
    pinned: dict[str, Any] = {}
    for item in pins:
        name = ".".join(item.path)
        if isinstance(sweep, dict):
            sweep.pop(name, None)
        pinned[name] = item.value
        node = out
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or node[part] is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise check.fail(
                    name, f"{'.'.join(parts[: i + 1])} is a fixed value ({node[part]!r}), not a mapping, so "
                    f"sweep parameter {name} cannot be pinned inside it",
                )
            node = node[part]
        node[parts[-1]] = copy.deepcopy(item.value)
        notes.append(
            f"--set {item.text}: pins sweep parameter {name} to {item.value!r} for this run "
            "(not searched; every trial's config has this value)"
        )
    if isinstance(sweep, dict):
        changed = True
        while changed:  # dropping one parameter can leave another's condition unmet
            changed = False
            for other, spec in list(sweep.items()):
                when = spec.get("when") if isinstance(spec, dict) else None
                if not isinstance(when, dict):
                    continue
                kept = {}
                met = True
                for cond, accepted in when.items():
                    cond = str(cond)
                    if cond in pinned:
                        values = accepted if isinstance(accepted, list) else [accepted]
                        met = met and _among(pinned[cond], tuple(values))
                    else:
                        kept[cond] = accepted
                if not met:
                    del sweep[other]
                    pinned[str(other)] = _MISSING
                    notes.append(
                        f"sweep parameter {other} is not searched in this run: its condition "
                        f"({', '.join(f'{c}={v!r}' for c, v in when.items())}) is false for the pinned value(s)"
                    )
                    changed = True
                elif len(kept) != len(when):
                    if kept:
                        spec["when"] = kept
                    else:
                        del spec["when"]
    if isinstance(out.get("enqueue"), list):
        entries = [_without(entry, set(pinned)) for entry in out["enqueue"]]
        out["enqueue"] = [e for e in entries if e != {}] or None
    return out, notes


def _without(entry: Any, names: set[str], prefix: str = "") -> Any:
    """An ``enqueue`` entry without the pinned names (dotted keys or nested mappings)."""
    if not isinstance(entry, dict):
        return entry
    out = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if name in names:
            continue
        if isinstance(value, dict) and any(n.startswith(name + ".") for n in names):
            value = _without(value, names, name + ".")
            if value == {}:
                continue
        out[key] = value
    return out


def check_new_key_typos(raw: Mapping[str, Any], overrides: list[Override], path: Path) -> None:
    """A ``--set`` key that is not in the file and one edit from a study setting is a typo.

    Raises:
        OverrideError: naming the item and the setting it was probably meant to be.
    """
    for item in overrides:
        top = resolve_path(dict(raw), item.path)[0]
        if top in raw or top in RESERVED_KEYS:
            continue
        close = [r for r in RESERVED_KEYS if _edit_distance(top, r) == 1]
        if close:
            rest = item.text.partition("=")[2]
            raise OverrideError(
                item.text,
                f"{top} is not in {path.name} and is not a setting; did you mean {close[0]!r} "
                f"(--set {'.'.join((close[0], *item.path[1:]))}={rest.strip()})? To pass a new fixed "
                f"parameter named {top}, add it to {path.name}",
            )


def _typo_notes(raw: Mapping[str, Any], path: Path) -> list[str]:
    notes = []
    for key in raw:
        if key in RESERVED_KEYS:
            continue
        close = [r for r in RESERVED_KEYS if _edit_distance(key, r) == 1]
        if not close:
            close = difflib.get_close_matches(key, RESERVED_KEYS, n=1, cutoff=0.9)
        if close:
            notes.append(
                f"{path.name}: {key}: not a reserved key, so it is passed to the function as a "
                f"fixed parameter; did you mean {close[0]!r}?"
            )
    return notes


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (adjacent swaps count as one edit)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


class _Checker:
    """Validation helpers that know the file name (and the ``--set`` items) for messages."""

    def __init__(self, source: str, overrides: tuple[Override, ...] = ()) -> None:
        self.source = source
        self.overrides = overrides

    def fail(self, key: str, message: str, related: tuple[str, ...] = ()) -> ConfigError:
        """The error for ``key``; names the ``--set`` item that set it (or a ``related`` key)."""
        for item in reversed(self.overrides):
            for k in (key, *related):
                if k == item.key or k.startswith(item.key + ".") or item.key.startswith(k + "."):
                    return ConfigError(f"{self.source} (with --set {item.text!r})", key, message)
        return ConfigError(self.source, key, message)

    def name(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        value = raw.get(key, default)
        if isinstance(value, bool):
            raise self.fail(
                key, f"must be a string, got {value!r} (YAML reads yes/no/on/off as booleans; quote it)"
            )
        if not isinstance(value, (str, int, float)):
            raise self.fail(key, f"must be a string, got {value!r}")
        text = str(value).strip()
        if not text:
            raise self.fail(key, "must not be empty")
        if any(ch in text for ch in _NAME_FORBIDDEN) or text in {".", ".."} or ".." in text:
            raise self.fail(
                key,
                f"{text!r} would leave the save directory; use letters, digits, '-', '_' or '.'",
            )
        return text

    def integer(self, raw: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int:
        if key not in raw or raw[key] is None:
            if default is None:
                raise self.fail(key, f"is required (an integer >= {minimum})")
            return default
        value = _as_int(raw[key])
        if value is None or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {raw[key]!r}")
        return value

    def number(self, value: Any, key: str) -> float:
        number = _as_number(value)
        if number is None:
            raise self.fail(key, f"must be a number, got {value!r}")
        return number


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return _as_int(float(value)) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            return None
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def validate(
    raw: Mapping[str, Any], source: str, cpu_count: int, overrides: tuple[Override, ...] = ()
) -> SearchConfig:
    """Turn a raw mapping into a :class:`SearchConfig`, or raise the first problem found."""
    check = _Checker(source, overrides)
    experiment_name = check.name(raw, "experiment_name", Path(source).stem or "experiment")
    tag = check.name(raw, "tag", "default")

    directions = _validate_directions(raw, check)
    direction = directions[0]

    gpus = _validate_gpus(raw.get("gpus"), check)
    n_jobs_raw = raw.get("n_jobs", len(gpus) or 1)
    n_jobs = _as_int(n_jobs_raw)
    if n_jobs is None or n_jobs == 0 or n_jobs < -cpu_count:
        raise check.fail(
            "n_jobs",
            f"must be a positive integer, or -1 for all {cpu_count} cores, got {n_jobs_raw!r}",
        )
    if n_jobs < 0:  # joblib's convention: -1 all cores, -2 all but one, ...
        n_jobs = cpu_count + 1 + n_jobs
    one_machine = str(raw.get("backend") or "loky").strip().lower() != "dask" or str(
        raw.get("dask_scheduler") or "local"
    ).strip() == "local"
    if gpus and n_jobs > len(gpus) and one_machine:  # on a cluster, gpus lists each machine's devices
        raise check.fail(
            "n_jobs",
            f"{n_jobs} trials would run at once but gpus lists {len(gpus)} device(s) "
            f"{list(gpus)}; lower n_jobs, or list a device twice to share it",
            related=("gpus",),
        )

    n_trials = check.integer(raw, "n_trials", None, 1)
    n_startup_trials = check.integer(raw, "n_startup_trials", 10, 0)
    raw, seed = _base_seed(raw, check)

    trial_timeout: float | None = None
    if raw.get("trial_timeout") is not None:
        trial_timeout = check.number(raw["trial_timeout"], "trial_timeout")
        if trial_timeout <= 0:
            raise check.fail("trial_timeout", f"must be a number of seconds > 0, got {raw['trial_timeout']!r}")
    lock_timeout = 120.0
    if raw.get("lock_timeout") is not None:
        lock_timeout = check.number(raw["lock_timeout"], "lock_timeout")
        if lock_timeout <= 0:
            raise check.fail("lock_timeout", f"must be a number of seconds > 0, got {raw['lock_timeout']!r}")

    params = _validate_params(raw.get("sweep_parameters"), check)
    params = _check_conditions(params, check)
    backend, dask_scheduler = _validate_backend(raw, check)
    storage = parse_storage(raw.get("storage"))
    if isinstance(storage, str):
        raise check.fail("storage", storage)
    max_worker_deaths = check.integer(raw, "max_worker_deaths", 3, 1)
    max_trial_errors = check.integer(raw, "max_trial_errors", 5, 0)
    heartbeat_interval = 10.0
    if raw.get("heartbeat_interval") is not None:
        heartbeat_interval = check.number(raw["heartbeat_interval"], "heartbeat_interval")
        if heartbeat_interval <= 0:
            raise check.fail(
                "heartbeat_interval", f"must be a number of seconds > 0, got {raw['heartbeat_interval']!r}"
            )

    trials_per_process = (
        None if raw.get("trials_per_process") is None else check.integer(raw, "trials_per_process", None, 1)
    )
    threads_per_trial = (
        None if raw.get("threads_per_trial") is None else check.integer(raw, "threads_per_trial", None, 1)
    )
    trial_output = str(raw.get("trial_output") or "file").strip().lower()
    if trial_output not in TRIAL_OUTPUTS:
        raise check.fail("trial_output", f"must be one of {list(TRIAL_OUTPUTS)}, got {raw['trial_output']!r}")

    mlflow = _validate_tracking(raw.get("tracking"), check)

    fixed = {k: copy.deepcopy(v) for k, v in raw.items() if k not in STUDY_KEYS}
    fixed["experiment_name"] = experiment_name
    fixed["tag"] = tag
    _check_param_paths(params, fixed, check)
    sampler = _validate_sampler(raw, params, n_startup_trials, directions, check)
    pruner = _validate_pruner(raw.get("pruner"), directions, check)
    enqueue = _validate_enqueue(raw.get("enqueue"), params, sampler, check)
    stop = _validate_stop_rules(raw, directions, check)
    verbosity = _validate_verbosity(raw.get("verbosity"), check)
    return SearchConfig(
        stop=stop,
        verbosity=verbosity,  # type: ignore[arg-type]
        source=source,
        experiment_name=experiment_name,
        tag=tag,
        direction=direction,  # type: ignore[arg-type]
        n_jobs=n_jobs,
        n_trials=n_trials,
        n_startup_trials=n_startup_trials,
        seed=seed,
        trial_timeout=trial_timeout,
        lock_timeout=lock_timeout,
        params=params,
        fixed=fixed,
        resolved=_redacted(raw, storage),
        directions=directions,
        sampler=sampler,
        pruner=pruner,
        enqueue=enqueue,
        backend=backend,  # type: ignore[arg-type]
        dask_scheduler=dask_scheduler,
        storage=storage,
        gpus=gpus,
        max_worker_deaths=max_worker_deaths,
        heartbeat_interval=heartbeat_interval,
        max_trial_errors=max_trial_errors,
        trials_per_process=trials_per_process,
        threads_per_trial=threads_per_trial,
        trial_output=trial_output,  # type: ignore[arg-type]
        mlflow=mlflow,
    )


def _base_seed(raw: Mapping[str, Any], check: _Checker) -> tuple[Mapping[str, Any], int | None]:
    """The base seed: the top-level ``seed``, or Optuna's own ``sampler: {seed: N}`` (same
    meaning: worker i samples with N + i); both set and different is an error. Returns the
    mapping without ``sampler.seed`` (the sampler is built with each worker's seed)."""
    top = None if raw.get("seed") is None else check.integer(raw, "seed", None, 0)
    sampler = raw.get("sampler")
    if not isinstance(sampler, dict) or "seed" not in sampler:
        return raw, top
    inner = None if sampler["seed"] is None else _as_int(sampler["seed"])
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


def _seconds(raw: Mapping[str, Any], key: str, check: _Checker) -> float | None:
    if raw.get(key) is None:
        return None
    value = check.number(raw[key], key)
    if value <= 0:
        raise check.fail(key, f"must be a number of seconds > 0, got {raw[key]!r}")
    return value


def _validate_stop_rules(raw: Mapping[str, Any], directions: tuple[str, ...], check: _Checker) -> StopRules:
    """``timeout``, ``stop_grace``, ``stop_no_improvement``, ``stop_at_value``."""
    timeout = _seconds(raw, "timeout", check)
    grace = _seconds(raw, "stop_grace", check)
    no_improvement = None
    if raw.get("stop_no_improvement") is not None:
        no_improvement = check.integer(raw, "stop_no_improvement", None, 1)
    at_value = None if raw.get("stop_at_value") is None else check.number(raw["stop_at_value"], "stop_at_value")
    if len(directions) > 1:
        for key, value in (("stop_no_improvement", no_improvement), ("stop_at_value", at_value)):
            if value is not None:
                raise check.fail(
                    key, f"needs one objective (there is no single best value); directions has {len(directions)}",
                    ("directions",),
                )
    return StopRules(
        timeout=timeout, grace=60.0 if grace is None else grace, no_improvement=no_improvement, at_value=at_value
    )


def _validate_verbosity(value: Any, check: _Checker) -> str:
    if value is None:
        return "normal"
    if not isinstance(value, str) or value.strip().lower() not in VERBOSITIES:
        raise check.fail("verbosity", f"must be one of {list(VERBOSITIES)}, got {value!r}")
    return value.strip().lower()
def _validate_tracking(value: Any, check: _Checker) -> MlflowSpec | None:
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
        raise check.fail(f"tracking.mlflow.{unknown[0]}", "unknown key; expected tracking_uri or experiment_name")
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


def _redacted(raw: Mapping[str, Any], storage: StorageSpec) -> dict[str, Any]:
    """A deep copy of the config with any storage password hidden (it is stored and printed)."""
    resolved = copy.deepcopy(dict(raw))
    if storage.kind == "postgresql":
        resolved["storage"] = redact_url(storage.url)
    return resolved


def _validate_backend(raw: Mapping[str, Any], check: _Checker) -> tuple[str, str]:
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


def _validate_gpus(value: Any, check: _Checker) -> tuple[str, ...]:
    """``gpus:`` as device ids (strings, as CUDA_VISIBLE_DEVICES takes them); empty if unset."""
    if value is None:
        return ()
    if isinstance(value, str) and value.strip().lower() == "auto":
        found, why = detect_gpus()
        if not found:
            raise check.fail("gpus", f"auto found no GPU on this machine ({why}); list the devices, e.g. [0, 1]")
        return found
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise check.fail("gpus", f"must be 'auto' or a non-empty list of device ids such as [0, 1], got {value!r}")
    devices: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise check.fail("gpus", f"device ids must be integers >= 0 or GPU UUIDs, got {item!r}")
        text = str(item).strip()
        if (isinstance(item, int) and item < 0) or not text or "," in text:
            raise check.fail("gpus", f"device ids must be integers >= 0 or GPU UUIDs, got {item!r}")
        devices.append(text)
    return tuple(devices)


def _validate_directions(raw: Mapping[str, Any], check: _Checker) -> tuple[str, ...]:
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


def _block(section: Any, kind: str, default: str, table: Mapping[str, str], check: _Checker) -> tuple[str, dict[str, Any]]:
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
        raise check.fail(f"{kind}.type", f"unknown {kind} {kind_name!r}; expected one of {list(table)}")
    for key in body:
        if not isinstance(key, str):
            raise check.fail(kind, f"setting names must be strings, got {key!r}")
    return kind_name.strip().lower(), body


def _check_options(kind: str, type_name: str, body: Mapping[str, Any], check: _Checker) -> None:
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
            raise check.fail(
                where, f"unknown setting for the {type_name} {kind}; valid: {valid_text}"
            )
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


def _try_build(spec: AlgorithmSpec, check: _Checker) -> None:
    """Build the object once so that a bad value is reported now, not in every worker."""
    try:
        _algorithms.build(spec, seed=0)
    except (TypeError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise check.fail(spec.kind, f"the {spec.type} {spec.kind} rejects these settings: {message}") from err


def _validate_sampler(
    raw: Mapping[str, Any], params: tuple[ParamSpec, ...], n_startup_trials: int,
    directions: tuple[str, ...], check: _Checker,
) -> AlgorithmSpec:
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


def _validate_pruner(section: Any, directions: tuple[str, ...], check: _Checker) -> AlgorithmSpec:
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


def _validate_enqueue(
    section: Any, params: tuple[ParamSpec, ...], sampler: AlgorithmSpec, check: _Checker
) -> tuple[Mapping[str, Any], ...]:
    """A list of partial configs: ``{dotted name: value}`` or nested mappings of them."""
    if section is None:
        return ()
    if not isinstance(section, list):
        raise check.fail("enqueue", f"must be a list of parameter mappings, got {section!r}")
    if section and sampler.type == "grid":
        raise check.fail("enqueue", "cannot be combined with the grid sampler (it tries every point)",
                         ("sampler.type",))
    by_name = {p.name: p for p in params}
    names = ", ".join(by_name) or "none"
    entries = []
    for i, entry in enumerate(section):
        key = f"enqueue[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise check.fail(key, f"must be a non-empty mapping of sweep parameter to value, got {entry!r}")
        flat: dict[str, Any] = {}
        _flatten_entry(entry, "", by_name, flat, key, names, check)
        for name, value in flat.items():
            spec = by_name[name]
            if not spec.contains(value):
                raise check.fail(f"{key}.{name}", f"{value!r} is not in the space of {name} ({spec.describe()})")
        for name in flat:
            spec = by_name[name]
            if all(other in flat for other, _ in spec.when) and not spec.active(flat):
                raise check.fail(
                    f"{key}.{name}",
                    f"is never used: its condition ({spec.condition_text()}) is false for this entry's values",
                )
        entries.append(flat)
    return tuple(entries)


def _flatten_entry(
    node: Mapping[str, Any], prefix: str, by_name: Mapping[str, ParamSpec], out: dict[str, Any],
    key: str, names: str, check: _Checker,
) -> None:
    for part, value in node.items():
        name = f"{prefix}{part}"
        if name in by_name:
            out[name] = value
        elif isinstance(value, dict) and any(n.startswith(name + ".") for n in by_name):
            _flatten_entry(value, name + ".", by_name, out, key, names, check)
        else:
            raise check.fail(f"{key}.{name}", f"not a sweep parameter; sweep parameters: {names}")


def _validate_params(section: Any, check: _Checker) -> tuple[ParamSpec, ...]:
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise check.fail(
            "sweep_parameters", f"must be a mapping of parameter name to spec, got {section!r}"
        )
    return tuple(_validate_param(str(name), spec, check) for name, spec in section.items())


def _validate_param(name: str, spec: Any, check: _Checker) -> ParamSpec:
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
            f"unknown setting for a {kind} parameter; allowed: {', '.join(_PARAM_KEYS[kind])}",
        )
    when = _validate_when(spec.get("when"), key, check)
    if kind == "categorical":
        return ParamSpec(name=name, type="categorical", choices=_validate_choices(spec, key, check), when=when)
    return dataclasses.replace(_validate_numeric(name, kind, spec, key, check), when=when)


def _validate_when(section: Any, key: str, check: _Checker) -> tuple[tuple[str, tuple[Any, ...]], ...]:
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


def _check_conditions(params: tuple[ParamSpec, ...], check: _Checker) -> tuple[ParamSpec, ...]:
    """Check each condition against the parameter it names; return the parameters ordered so
    that every parameter comes after those its condition names (declaration order otherwise)."""
    by_name = {p.name: p for p in params}
    for p in params:
        for other, values in p.when:
            where = f"sweep_parameters.{p.name}.when.{other}"
            target = by_name.get(other)
            if target is None:
                raise check.fail(
                    where, f"names no sweep parameter; sweep parameters: {', '.join(by_name)}"
                )
            if target.type == "float":
                raise check.fail(where, f"{other} is a float parameter; conditions can name only categorical or int parameters")
            for value in values:
                if not target.contains(value):
                    allowed = (
                        f"choices {list(target.choices)}" if target.type == "categorical"
                        else target.describe()
                    )
                    raise check.fail(where, f"{value!r} is not a value {other} can take ({allowed})")
    ordered: list[ParamSpec] = []
    placed: set[str] = set()
    remaining = list(params)
    while remaining:
        ready = next((p for p in remaining if all(o in placed for o, _ in p.when)), None)
        if ready is None:
            cycle = _find_cycle(remaining)
            raise check.fail(
                f"sweep_parameters.{cycle[0]}.when", f"conditions form a cycle: {' -> '.join(cycle)}"
            )
        ordered.append(ready)
        placed.add(ready.name)
        remaining.remove(ready)
    return tuple(ordered)


def _find_cycle(params: list[ParamSpec]) -> list[str]:
    """A cycle among parameters that could not be ordered (each names an unplaced one)."""
    deps = {p.name: [o for o, _ in p.when if o in {q.name for q in params}] for p in params}
    path = [params[0].name]
    while True:
        nxt = deps[path[-1]][0]
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)


def _validate_choices(spec: Mapping[str, Any], key: str, check: _Checker) -> tuple[Any, ...]:
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
    name: str, kind: str, spec: Mapping[str, Any], key: str, check: _Checker
) -> ParamSpec:
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
    return f"{value:.12g}"  # plain :g (6 digits) could print "(1) must be > low (1)"


def _check_param_paths(params: tuple[ParamSpec, ...], fixed: Mapping[str, Any], check: _Checker) -> None:
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

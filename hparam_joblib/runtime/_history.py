"""What each run of a study used, and what changed since the last one.

The study keeps a history: its user attr ``runs`` is a list with one entry per launch (run id,
start time, host, the config file, the resolved config, the search space, the trials the study
held and the keys that changed). User attr ``config`` stays the latest run's config (what
``hparam-joblib status`` reads); each trial's own ``config`` is the source of truth for what
that trial ran with.

Before anything runs, the new config is compared with the study:

* the **search space** against the trials already in it (their stored distributions) and the
  previous run's space: a parameter whose type, range, step, log or choices differ, one removed,
  one added, or a changed condition is an error (exit 2) naming both values and how to start a
  new study (``--set tag=...``): Optuna's samplers would mix two spaces in one study;
* **fixed parameters and study settings** against the previous run: a one-line note naming the
  keys that changed (old -> new); the run goes on.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from hparam_joblib._errors import ConfigError
from hparam_joblib._keys import RUNS_KEY, STUDY_CONFIG_KEY
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.config._space import to_distribution
from hparam_joblib.runtime._json import jsonable

#: Values longer than this are shown as "(changed)" in the note.
_SHOWN = 40


def space_of(cfg: SearchConfig) -> dict[str, dict[str, Any]]:
    """The search space as stored in a run entry: ``{name: {type, low, high, ...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for p in cfg.params:
        entry: dict[str, Any] = {"type": p.type}
        if p.type == "categorical":
            entry["choices"] = list(p.choices)
        else:
            entry.update(low=p.low, high=p.high, log=p.log, step=p.step)
        if p.when:
            entry["when"] = {name: list(values) for name, values in p.when}
        out[p.name] = jsonable(entry)
    return out


def describe_distribution(dist: BaseDistribution) -> str:
    """``float [0.0, 1.0] log``, ``int [1, 9] step 2``, ``categorical ['a', 'b']``."""
    if isinstance(dist, CategoricalDistribution):
        return f"categorical {list(dist.choices)}"
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        kind = "int" if isinstance(dist, IntDistribution) else "float"
        extra = " log" if dist.log else ""
        step = dist.step
        if step is not None and not (kind == "int" and step == 1):
            extra += f" step {step}"
        return f"{kind} [{dist.low}, {dist.high}]{extra}"
    return repr(dist)


def _describe_entry(entry: Mapping[str, Any]) -> str:
    if entry.get("type") == "categorical":
        text = f"categorical {entry.get('choices')}"
    else:
        extra = " log" if entry.get("log") else ""
        extra += f" step {entry['step']}" if entry.get("step") is not None else ""
        text = f"{entry.get('type')} [{entry.get('low')}, {entry.get('high')}]{extra}"
    if entry.get("when"):
        text += f" when {entry['when']}"
    return text


def previous_run(user_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last run entry, or for a study written before the history existed, one built from
    its user attr ``config``; None for a new study."""
    runs = user_attrs.get(RUNS_KEY)
    if isinstance(runs, list) and runs and isinstance(runs[-1], Mapping):
        return dict(runs[-1])
    config = user_attrs.get(STUDY_CONFIG_KEY)
    if isinstance(config, Mapping):
        sweep = config.get("sweep_parameters")
        return {"config": dict(config), "space": None, "names": list(sweep) if isinstance(sweep, Mapping) else None}
    return None


def check_space(
    cfg: SearchConfig, trials: Iterable[FrozenTrial], previous: Mapping[str, Any] | None, db_shown: str
) -> None:
    """Raise when the config's search space conflicts with the study's trials or last run.

    Raises:
        ConfigError: the first conflicting parameter, with the old and the new value.
    """
    held: dict[str, BaseDistribution] = {}
    n = 0
    for t in trials:
        n += 1
        for name, dist in t.distributions.items():
            held.setdefault(name, dist)
    if not n:
        return
    current = {p.name: p for p in cfg.params}
    old_space = previous.get("space") if previous else None
    old_names = set(old_space) if isinstance(old_space, Mapping) else (
        set(previous["names"]) if previous and previous.get("names") is not None else None
    )
    how = (
        f"the study {cfg.study_name} in {db_shown} holds {n} trial(s) sampled from the old space; "
        f"keep the old space, or start a new study with --set tag=<new tag>"
    )
    for name, spec in current.items():
        if name in held and to_distribution(spec) != held[name]:
            raise ConfigError(
                cfg.source, f"sweep_parameters.{name}",
                f"changed from {describe_distribution(held[name])} to {spec.describe()}; {how}",
            )
        if isinstance(old_space, Mapping) and name in old_space:
            old = old_space[name]
            if (old.get("when") or {}) != space_of(cfg)[name].get("when", {}):
                raise ConfigError(
                    cfg.source, f"sweep_parameters.{name}",
                    f"changed from {_describe_entry(old)} to {spec.describe()}; {how}",
                )
    for name in sorted(set(held) | (old_names or set())):
        if name not in current:
            was = describe_distribution(held[name]) if name in held else _describe_entry(old_space[name]) if (
                isinstance(old_space, Mapping) and name in old_space
            ) else "a sweep parameter"
            raise ConfigError(
                cfg.source, f"sweep_parameters.{name}",
                f"removed (was {was}), but the study's trials were sampled with it; {how}",
            )
    if old_names is not None:
        for name, spec in current.items():
            if name not in old_names and name not in held:
                raise ConfigError(
                    cfg.source, f"sweep_parameters.{name}",
                    f"added ({spec.describe()}; the last run's space had no {name}); {how}",
                )


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}{key}.", out)
    else:
        out[prefix[:-1]] = node


def settings_changes(previous: Mapping[str, Any] | None, cfg: SearchConfig) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every fixed parameter or study setting that differs from
    the last run (``sweep_parameters`` left out: :func:`check_space` handles it)."""
    if not previous or not isinstance(previous.get("config"), Mapping):
        return []
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    _flatten({k: v for k, v in previous["config"].items() if k != "sweep_parameters"}, "", old)
    _flatten({k: v for k, v in jsonable(dict(cfg.resolved)).items() if k != "sweep_parameters"}, "", new)
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            changes.append((key, None if before is missing else before, None if after is missing else after))
    return changes


def changes_note(changes: list[tuple[str, Any, Any]], study_name: str) -> str:
    """One line: the keys that changed since the last run, with old -> new when short."""

    def shown(value: Any) -> str:
        text = "unset" if value is None else json.dumps(value) if not isinstance(value, str) else value
        return text if len(text) <= _SHOWN else "..."

    items = ", ".join(f"{key} ({shown(a)} -> {shown(b)})" for key, a, b in changes)
    return (
        f"study {study_name}: changed since its last run: {items}; "
        "each trial's config records what it ran with (study user attr 'runs' lists every run)"
    )


def run_entry(
    cfg: SearchConfig, run_id: str, trials_before: int, changes: list[tuple[str, Any, Any]],
    retried: list[int] | None = None,
) -> dict[str, Any]:
    """The history entry of this run."""
    entry: dict[str, Any] = {
        "run": run_id,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "source": cfg.source,
        "trials_before": trials_before,
        "changed": [key for key, _, _ in changes],
        "config": jsonable(dict(cfg.resolved)),
        "space": space_of(cfg),
    }
    if retried:
        entry["retried"] = retried
    job = scheduler_ids()
    if job:
        entry["job"] = job
    return entry


#: Where a launch runs in a batch system, as ``hparam-joblib status`` names it: entry key -> variable.
_JOB_VARIABLES: tuple[tuple[str, str], ...] = (
    ("slurm_job", "SLURM_JOB_ID"), ("slurm_array_job", "SLURM_ARRAY_JOB_ID"),
    ("slurm_array_task", "SLURM_ARRAY_TASK_ID"), ("k8s_index", "JOB_COMPLETION_INDEX"),
)


def scheduler_ids() -> dict[str, str]:
    """This launch's SLURM job (and array job and task) or Kubernetes Job index, when set."""
    return {key: os.environ[var] for key, var in _JOB_VARIABLES if os.environ.get(var)}


def end_run(storage: Any, study_id: int, run_id: str, how: str) -> None:
    """Record how this launch ended in its history entry (``ended``: when, and how: ``done``,
    ``interrupted by SIGTERM``, ``stopped: ...``). One atomic step, like :func:`append_run`; a
    launch that was killed records nothing (``status`` says so)."""
    ended = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "how": how}

    def mark(runs: Any) -> list[Any]:
        held = runs if isinstance(runs, list) else []
        return [{**e, "ended": ended} if isinstance(e, Mapping) and e.get("run") == run_id else e for e in held]

    storage.update_study_user_attr(study_id, RUNS_KEY, mark)


def append_run(storage: Any, study_id: int, entry: Mapping[str, Any]) -> int:
    """Add ``entry`` to the study's run history and make its config the study's ``config``;
    returns the launch's number: its entry's position in the history (0 for the study's first).

    One atomic step, so launches of the study that start at once each keep their entry and
    get distinct numbers (each loop's sampler seed mixes it in: ``worker_seed``)."""
    position = [0]

    def appended(runs: Any) -> list[Any]:
        held = runs if isinstance(runs, list) else []
        position[0] = len(held)  # the update may be retried: the committed call's value is kept
        return [*held, dict(entry)]

    storage.update_study_user_attr(study_id, RUNS_KEY, appended)
    storage.set_study_user_attr(study_id, STUDY_CONFIG_KEY, entry["config"])
    return position[0]

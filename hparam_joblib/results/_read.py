"""Read a finished (or running) study into plain data: counts, best trials, failures,
throughput, running trials, configs, the trials table.

Everything here works on a :class:`StudyData` snapshot taken once from the database; nothing
writes to the study. ``_format`` turns the data into text, ``_cli`` does the I/O.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._errors import UsageError
from hparam_joblib._keys import (
    CONFIG_KEY,
    CPU_SECONDS_KEY,
    FAILURE_REASON_KEY,
    LOG_FILE_KEY,
    OWNER_KEY,
    PEAK_GPU_MIB_KEY,
    PEAK_RSS_MIB_KEY,
    RETIRED_KEY,
    RUNS_KEY,
    STUDY_CONFIG_KEY,
)
from hparam_joblib.config._space import build_config
from hparam_joblib.storage import owner_is_dead

#: The order states are listed in (every Optuna state).
STATE_ORDER: tuple[str, ...] = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class StudyData:
    """One study, read once: what every report below is computed from.

    Attributes:
        name: the study name.
        directions: ``"minimize"``/``"maximize"``, one per objective.
        metric_names: the objectives' names, when the study set them.
        config: the study's user attr ``"config"`` (the resolved YAML config), if stored.
        trials: every trial, in number order.
        best: the best trial (one objective) or the Pareto front (several); empty when no
            trial completed.
        retired: numbers of the trials ``--retry-failed`` retired (PRUNED, not counted).
        launches: the study's run history (user attr ``runs``): one entry per launch, oldest
            first (run id, host, pid, start, batch job ids, how it ended when it recorded it).
    """

    name: str
    directions: tuple[str, ...]
    metric_names: tuple[str, ...] | None
    config: Mapping[str, Any] | None
    trials: tuple[FrozenTrial, ...]
    best: tuple[FrozenTrial, ...]
    retired: tuple[int, ...] = ()
    launches: tuple[Mapping[str, Any], ...] = ()

    @property
    def multi_objective(self) -> bool:
        """True when the study has several objectives."""
        return len(self.directions) > 1

    def objective_names(self) -> list[str]:
        """A name per objective: the study's metric names, else ``value`` / ``value_<i>``."""
        if self.metric_names and len(self.metric_names) == len(self.directions):
            return list(self.metric_names)
        if not self.multi_objective:
            return ["value"]
        return [f"value_{i}" for i in range(len(self.directions))]


def snapshot(study: optuna.Study) -> StudyData:
    """Read everything the reports need from a loaded study (one pass over the database)."""
    trials = tuple(sorted(study.get_trials(deepcopy=False), key=lambda t: t.number))
    directions = tuple(
        "maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions
    )
    best: tuple[FrozenTrial, ...] = ()
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = best_front(study, len(directions) > 1)
    config = study.user_attrs.get(STUDY_CONFIG_KEY)
    metric_names = study.metric_names
    retired = study._storage.get_study_system_attrs(study._study_id).get(RETIRED_KEY) or []
    return StudyData(
        name=study.study_name,
        directions=directions,
        metric_names=tuple(metric_names) if metric_names else None,
        config=config if isinstance(config, Mapping) else None,
        trials=trials,
        best=best,
        retired=tuple(sorted(n for n in retired if isinstance(n, int))),
        launches=tuple(e for e in study.user_attrs.get(RUNS_KEY) or () if isinstance(e, Mapping)),
    )


def best_front(study: optuna.Study, multi_objective: bool) -> tuple[FrozenTrial, ...]:
    """The best trial (one objective) or the Pareto front in number order (several); empty when
    no trial completed, or every completed value is non-finite."""
    try:
        if multi_objective:
            return tuple(sorted(study.best_trials, key=lambda t: t.number))
        return (study.best_trial,)
    except ValueError:  # no completed trial, or every completed value is non-finite
        return ()


def require_best(data: StudyData) -> None:
    """Refuse a study with no best trial yet.

    Raises:
        UsageError: no completed trial (the message counts the trials by state).
    """
    if not data.best:
        counts = ", ".join(f"{k} {v}" for k, v in state_counts(data.trials).items()) or "no trials"
        raise UsageError(f"study {data.name!r} has no completed trial yet ({counts})")


# -- counts, failures, throughput, running ---------------------------------------------------


def state_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """Trials per state name, in :data:`STATE_ORDER`, only states that occur."""
    counts = Counter(t.state.name for t in trials)
    return {name: counts[name] for name in STATE_ORDER if counts.get(name)}


def failure_reason(trial: FrozenTrial) -> str | None:
    """The stored one-line reason of a PRUNED or FAIL trial (a placeholder when none was stored)."""
    if trial.state not in (TrialState.PRUNED, TrialState.FAIL):
        return None
    reason = trial.user_attrs.get(FAILURE_REASON_KEY)
    if reason:
        return str(reason).splitlines()[0]
    return f"({trial.state.name.lower()}, no reason recorded)"


def failure_groups(trials: Iterable[FrozenTrial], top: int = 10) -> tuple[list[tuple[str, int]], int]:
    """Failed trials grouped by reason, most frequent first.

    Returns:
        Up to ``top`` ``(reason, count)`` pairs, and how many further reasons were left out.
    """
    counts = Counter(r for r in (failure_reason(t) for t in trials) if r is not None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:top], max(0, len(ranked) - top)


@dataclass(frozen=True)
class Throughput:
    """Finished trials over the study's span (first start to last completion)."""

    finished: int
    first_start: datetime | None
    last_complete: datetime | None

    @property
    def span_seconds(self) -> float:
        """Seconds between the first trial's start and the last trial's completion."""
        if self.first_start is None or self.last_complete is None:
            return 0.0
        return max(0.0, (self.last_complete - self.first_start).total_seconds())

    @property
    def per_minute(self) -> float | None:
        """Finished trials per minute, or ``None`` when nothing finished yet."""
        if not self.finished or self.span_seconds <= 0:
            return None
        return self.finished * 60.0 / self.span_seconds


def throughput(trials: Iterable[FrozenTrial]) -> Throughput:
    """Finished trials (COMPLETE + PRUNED, as the budget counts them: a FAIL is re-run) per
    minute over the study's span."""
    starts: list[datetime] = []
    completes: list[datetime] = []
    for t in trials:
        if t.datetime_start is not None:
            starts.append(t.datetime_start)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete is not None:
            completes.append(t.datetime_complete)
    return Throughput(
        finished=len(completes),
        first_start=min(starts) if starts else None,
        last_complete=max(completes) if completes else None,
    )


def runs(trials: Iterable[FrozenTrial]) -> list[list[FrozenTrial]]:
    """The trials grouped by the launch that ran them (owner ``run`` id), oldest run first;
    trials without an owner record (plain Optuna) form one group."""
    groups: dict[Any, list[FrozenTrial]] = {}
    for t in trials:
        owner = t.system_attrs.get(OWNER_KEY)
        run = owner.get("run") if isinstance(owner, Mapping) else None
        groups.setdefault(run, []).append(t)

    def first_start(group: list[FrozenTrial]) -> datetime:
        starts = [t.datetime_start for t in group if t.datetime_start is not None]
        return min(starts) if starts else datetime.max

    return sorted(groups.values(), key=first_start)


@dataclass(frozen=True)
class LaunchRow:
    """One launch of the study as ``status`` shows it: who ran it, its trials, how it ended."""

    run: str
    where: str
    started: str
    counts: dict[str, int]
    ended: str


def launch_rows(data: StudyData) -> list[LaunchRow]:
    """The study's launches, oldest first, each with its trials (by the owner's run id) and how
    it ended: its own record, else whether it still runs (RUNNING trials, or a live process on
    this host) or died without a word (killed, its machine lost)."""
    by_run: dict[str, list[FrozenTrial]] = {}
    for t in data.trials:
        owner = t.system_attrs.get(OWNER_KEY)
        if isinstance(owner, Mapping) and isinstance(owner.get("run"), str):
            by_run.setdefault(owner["run"], []).append(t)
    rows = []
    for entry in data.launches:
        run = str(entry.get("run", "?"))
        trials = by_run.get(run, [])
        raw_job = entry.get("job")
        job: Mapping[str, Any] = raw_job if isinstance(raw_job, Mapping) else {}
        where = f"{entry.get('host', '?')} pid {entry.get('pid', '?')}"
        if job.get("slurm_array_job") and job.get("slurm_array_task"):
            where += f", SLURM array {job['slurm_array_job']}_{job['slurm_array_task']} (job {job.get('slurm_job', '?')})"
        elif job.get("slurm_job"):
            where += f", SLURM job {job['slurm_job']}"
        if job.get("k8s_index"):
            where += f", Job index {job['k8s_index']}"
        ended = entry.get("ended")
        if isinstance(ended, Mapping):
            how = f"ended {str(ended.get('at', ''))[:19].replace('T', ' ')}: {ended.get('how', '?')}"
        elif _launcher_gone(entry):
            how = "no end recorded: its process is gone (killed, or its machine stopped)"
            stuck = sum(t.state == TrialState.RUNNING for t in trials)
            how += f"; its {stuck} RUNNING trial(s) are failed and re-run by the next launch" if stuck else ""
        else:
            how = "running (or killed on another machine: no end recorded yet)"
        rows.append(LaunchRow(run, where, str(entry.get("started", ""))[:19].replace("T", " "),
                              state_counts(trials), how))
    return rows


def _launcher_gone(entry: Mapping[str, Any]) -> bool:
    """A launch's process ran on this host and no longer exists (elsewhere: unknown, False)."""
    return owner_is_dead({"host": entry.get("host"), "pid": entry.get("pid")})


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial: when it started, who runs it, and whether that process is gone (it ran
    on this host and no longer exists)."""

    number: int
    started: datetime | None
    host: str | None
    pid: int | None
    gone: bool = False


def running_trials(trials: Iterable[FrozenTrial]) -> list[RunningTrial]:
    """The RUNNING trials with their owner (host, pid) when the package recorded one."""
    out = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        owner = t.system_attrs.get(OWNER_KEY)
        owner = owner if isinstance(owner, Mapping) else {}
        pid = owner.get("pid")
        out.append(RunningTrial(
            number=t.number, started=t.datetime_start,
            host=owner.get("host"), pid=pid if isinstance(pid, int) else None, gone=owner_is_dead(owner),
        ))
    return out


def heartbeat_interval(data: StudyData) -> float:
    """The study config's ``heartbeat_interval`` (seconds; 10 when not set)."""
    value = (data.config or {}).get("heartbeat_interval")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 10.0


# -- configs ---------------------------------------------------------------------------------


def place_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each ``dotted.name`` value placed at its path."""
    return build_config(base, params)


def trial_config(data: StudyData, trial: FrozenTrial) -> tuple[dict[str, Any], bool]:
    """The config the training function received for ``trial``.

    Returns:
        The config, and False when it was stored on the trial, True when it had to be rebuilt
        (the study config without ``sweep_parameters``, the trial's params at their paths).
    """
    stored = trial.user_attrs.get(CONFIG_KEY)
    if isinstance(stored, Mapping):
        return copy.deepcopy(dict(stored)), False
    base = {k: v for k, v in (data.config or {}).items() if k != "sweep_parameters"}
    return place_params(base, trial.params), True


def runnable_config(data: StudyData, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` plus what makes it a valid ``--config`` file of its own: one trial on one
    worker in its own study (``<tag>_best``, so the searched study is never touched), with the
    study's direction and ``trial_timeout``; no search space, so the function gets ``config``."""
    out = copy.deepcopy(dict(config))
    tag = out.get("tag") or (data.config or {}).get("tag") or "default"
    out["tag"] = f"{tag}_best"
    out.setdefault("experiment_name", (data.config or {}).get("experiment_name") or data.name)
    out["direction"] = data.directions[0]
    out["n_trials"] = 1
    out["n_jobs"] = 1
    timeout = (data.config or {}).get("trial_timeout")
    if timeout is not None:
        out["trial_timeout"] = timeout
    return out


# -- the trials table ------------------------------------------------------------------------


def param_names(data: StudyData) -> list[str]:
    """Every param name: the config's ``sweep_parameters`` order first, then first appearance."""
    names: list[str] = []
    sweep = (data.config or {}).get("sweep_parameters")
    if isinstance(sweep, Mapping):
        names = [str(k) for k in sweep]
    seen = set(names)
    used: set[str] = set()
    for t in data.trials:
        for name in t.params:
            used.add(name)
            if name not in seen:
                seen.add(name)
                names.append(name)
    return [n for n in names if n in used]


def trials_table(data: StudyData) -> tuple[list[str], list[list[Any]]]:
    """One row per trial: number, state, value(s), every param, duration, datetimes, reason.

    Returns:
        The column names and the rows (cells are ``None`` where a trial has no value).
    """
    params = param_names(data)
    value_columns = ["value"]
    if data.multi_objective:
        names = data.metric_names or tuple(str(i) for i in range(len(data.directions)))
        value_columns = [f"value_{name}" for name in names]
    columns = (
        ["number", "state", *value_columns]
        + [f"params_{p}" for p in params]
        + ["duration_s", "cpu_s", "datetime_start", "datetime_complete", "failure_reason", "peak_rss_mib", "peak_gpu_mib", "log_file"]
    )
    rows = []
    for t in data.trials:
        values: list[Any] = list(t.values) if t.values is not None else []
        values += [None] * (len(value_columns) - len(values))
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            [t.number, t.state.name, *values[: len(value_columns)]]
            + [t.params.get(p) for p in params]
            + [
                duration,
                t.user_attrs.get(CPU_SECONDS_KEY),
                t.datetime_start.isoformat(sep=" ") if t.datetime_start else None,
                t.datetime_complete.isoformat(sep=" ") if t.datetime_complete else None,
                failure_reason(t),
                t.user_attrs.get(PEAK_RSS_MIB_KEY),
                t.user_attrs.get(PEAK_GPU_MIB_KEY),
                t.user_attrs.get(LOG_FILE_KEY),
            ]
        )
    return columns, rows

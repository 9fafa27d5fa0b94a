"""Read a finished (or running) study: counts, best trials, failures, throughput, the trials table.

Everything here works on a :class:`StudyData` snapshot taken once from the database, and
returns plain data or text; nothing writes to the study. ``_results_cli`` does the I/O.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._keys import (
    CONFIG_KEY,
    ERROR,
    FAILURE_REASON_KEY,
    INTERRUPTED,
    LOG_FILE_KEY,
    OWNER_KEY,
    PEAK_RSS_MIB_KEY,
    RETIRED_KEY,
    STUDY_CONFIG_KEY,
    TIMEOUT,
    WORKER_DIED,
)
from hparam_joblib.config._space import build_config
from hparam_joblib.config._yaml import dump_yaml
from hparam_joblib.runtime._failures import LABELS, trial_kind
from hparam_joblib.storage import owner_is_dead

#: The order states are listed in (every Optuna state).
STATE_ORDER: tuple[str, ...] = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
#: How many Pareto-optimal / running trials ``status`` lists before "... and N more".
LIST_LIMIT = 10


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
    """

    name: str
    directions: tuple[str, ...]
    metric_names: tuple[str, ...] | None
    config: Mapping[str, Any] | None
    trials: tuple[FrozenTrial, ...]
    best: tuple[FrozenTrial, ...]
    retired: tuple[int, ...] = ()

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
    """Finished (COMPLETE, PRUNED, FAIL) trials per minute over the study's span."""
    starts: list[datetime] = []
    completes: list[datetime] = []
    for t in trials:
        if t.datetime_start is not None:
            starts.append(t.datetime_start)
        if t.state.is_finished() and t.datetime_complete is not None:
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


def _rate_text(tp: Throughput) -> str:
    if tp.per_minute is None or tp.first_start is None or tp.last_complete is None:
        return f"n/a ({tp.finished} finished)"
    return (
        f"{fmt_rate(tp.per_minute)} finished trials/min ({tp.finished} in "
        f"{fmt_seconds(tp.span_seconds)}, {tp.first_start:%Y-%m-%d %H:%M:%S} to "
        f"{tp.last_complete:%Y-%m-%d %H:%M:%S})"
    )


#: Runs listed by ``status`` (the latest ones).
RUNS_SHOWN = 5


def throughput_lines(trials: Iterable[FrozenTrial]) -> list[str]:
    """Throughput of each run (a launch of the search), not across the idle gap between runs."""
    groups = runs(trials)
    if len(groups) <= 1:
        return [f"throughput: {_rate_text(throughput(groups[0] if groups else []))}"]
    lines = [f"throughput: by run ({len(groups)} runs; the idle time between runs is left out)"]
    shown = groups[-RUNS_SHOWN:]
    if len(groups) > len(shown):
        lines.append(f"  ... {len(groups) - len(shown)} earlier run(s)")
    first = len(groups) - len(shown) + 1
    lines += [f"  run {first + i}: {_rate_text(throughput(g))}" for i, g in enumerate(shown)]
    return lines


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
        + ["duration_s", "datetime_start", "datetime_complete", "failure_reason", "peak_rss_mib", "log_file"]
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
                t.datetime_start.isoformat(sep=" ") if t.datetime_start else None,
                t.datetime_complete.isoformat(sep=" ") if t.datetime_complete else None,
                failure_reason(t),
                t.user_attrs.get(PEAK_RSS_MIB_KEY),
                t.user_attrs.get(LOG_FILE_KEY),
            ]
        )
    return columns, rows


# -- text ------------------------------------------------------------------------------------


def fmt_value(value: Any) -> str:
    """A short human form: floats to 6 significant digits, everything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def fmt_values(values: Sequence[float] | None) -> str:
    """``[v1, v2]`` with each value short."""
    return "[" + ", ".join(fmt_value(v) for v in (values or [])) + "]"


def fmt_rate(rate: float) -> str:
    """A rate with 3 significant digits, never in exponent form."""
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def fmt_seconds(seconds: float) -> str:
    """``42.0 s``, ``3m05s``, ``2h07m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fmt_params(params: Mapping[str, Any], indent: str) -> list[str]:
    if not params:
        return [f"{indent}(no params)"]
    width = max(len(k) for k in params)
    return [f"{indent}{k:<{width}} = {fmt_value(v)}" for k, v in params.items()]


def format_status(
    data: StudyData, db_path: str, now: datetime, heartbeats: Mapping[int, float] | None = None
) -> str:
    """The multi-line report of ``hparam-joblib status``.

    Args:
        heartbeats: on a database server, seconds since the last heartbeat of each RUNNING
            trial (by number); a trial silent for 3 ``heartbeat_interval`` is marked as such.
    """
    counts = state_counts(data.trials)
    total = len(data.trials)
    lines = [
        f"study:      {data.name} ({', '.join(data.directions)})",
        f"database:   {db_path}",
    ]
    by_state = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    planned = (data.config or {}).get("n_trials")
    n_finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) - len(data.retired)
    target = f"; {n_finished}/{planned} of n_trials finished" if isinstance(planned, int) else ""
    if data.retired:
        target += f" ({len(data.retired)} retired by --retry-failed not counted)"
    lines.append(f"trials:     {total} ({by_state}){target}")

    if not data.best:
        lines.append("best:       none yet (no trial completed)")
    elif data.multi_objective:
        objectives = ", ".join(f"{n} ({d})" for n, d in zip(data.objective_names(), data.directions))
        lines.append(f"best:       Pareto front of {len(data.best)} trial(s) over {objectives}")
        for t in data.best[:LIST_LIMIT]:
            params = ", ".join(f"{k}={fmt_value(v)}" for k, v in t.params.items())
            lines.append(f"  trial {t.number}: values {fmt_values(t.values)}  {params}")
        if len(data.best) > LIST_LIMIT:
            lines.append(f"  ... and {len(data.best) - LIST_LIMIT} more (see the best command)")
    else:
        best = data.best[0]
        lines.append(f"best:       {fmt_value(best.value)} (trial {best.number})")
        lines.extend(_fmt_params(best.params, "  "))

    running = running_trials(data.trials)
    if not running:
        lines.append("running:    none")
    else:
        lines.append(f"running:    {len(running)}")
        for r in running[:LIST_LIMIT]:
            since = ""
            if r.started is not None:
                ago = fmt_seconds((now - r.started).total_seconds())
                since = f" started {r.started:%Y-%m-%d %H:%M:%S} ({ago} ago)"
            who = f" on {r.host} pid {r.pid}" if r.host is not None or r.pid is not None else ""
            if r.gone:
                who += " (that process is gone; the next run of the search marks it FAIL)"
            elif heartbeats is not None and r.number in heartbeats:
                age = heartbeats[r.number]
                if age > 3 * heartbeat_interval(data):
                    who += (f" (no heartbeat for {fmt_seconds(age)}: its machine or process died; "
                            "the next run of the search marks it FAIL)")
                else:
                    who += f" (last heartbeat {fmt_seconds(age)} ago)"
            lines.append(f"  trial {r.number}{since}{who}")
        if len(running) > LIST_LIMIT:
            lines.append(f"  ... and {len(running) - LIST_LIMIT} more")

    lines.extend(throughput_lines(data.trials))

    lines += _failure_lines(data)
    return "\n".join(lines)


#: How each kind of trial that did not complete is accounted, for ``status``.
_ACCOUNTED = {
    ERROR: "PRUNED, counted toward n_trials; after a fix, --retry-failed re-runs them",
    TIMEOUT: "PRUNED, counted toward n_trials",
    WORKER_DIED: "FAIL, not counted: re-run",
    INTERRUPTED: "FAIL, not counted: re-run",
}


def _failure_lines(data: StudyData) -> list[str]:
    """Pruner decisions apart from failures; failures by kind (error, timeout, worker died,
    interrupted), each by reason; the trials retired by --retry-failed."""
    retired = set(data.retired)
    by_kind: dict[str, list[FrozenTrial]] = {}
    for t in data.trials:
        kind = trial_kind(t)
        if kind is not None:
            by_kind.setdefault("retired" if t.number in retired else kind, []).append(t)
    lines: list[str] = []
    pruned = by_kind.get("pruner", [])
    if pruned:
        lines.append(f"pruned:     {len(pruned)} by the pruner (by reason)")
        lines += _reason_lines(pruned, "  ")
    failed = [k for k in (ERROR, TIMEOUT, WORKER_DIED, INTERRUPTED) if by_kind.get(k)]
    if not failed:
        lines.append("failures:   none")
    else:
        lines.append(f"failures:   {sum(len(by_kind[k]) for k in failed)} (by kind, then reason)")
        for kind in failed:
            lines.append(f"  {LABELS[kind]}: {len(by_kind[kind])} ({_ACCOUNTED[kind]})")
            lines += _reason_lines(by_kind[kind], "    ")
    if by_kind.get("retired"):
        lines.append(
            f"retired:    {len(by_kind['retired'])} trial(s) that failed by an error, replaced by "
            "--retry-failed (still PRUNED with their reason, not counted)"
        )
    return lines


def _reason_lines(trials: list[FrozenTrial], indent: str) -> list[str]:
    groups, more = failure_groups(trials)
    width = max(len(str(c)) for _, c in groups)
    out = [f"{indent}{count:>{width}}  {reason}" for reason, count in groups]
    if more:
        out.append(f"{indent}... and {more} more reason(s)")
    return out


def _header_lines(data: StudyData, trial: FrozenTrial, rebuilt: bool, db_path: str) -> list[str]:
    dirs = ", ".join(data.directions)
    if data.multi_objective:
        what = f"values {list(trial.values or [])!r} ({dirs}), on the Pareto front"
    else:
        what = f"value {trial.value!r} ({dirs})"
    lines = [
        f"# best config of study {data.name}: trial {trial.number}, {what}",
        f"# from {db_path}",
    ]
    if rebuilt:
        lines.append("# rebuilt from the study config: this trial has no stored config")
    return lines


def best_yaml(data: StudyData, db_path: str) -> str:
    """The best trial's config as YAML with a header comment (one document per Pareto trial)."""
    if not data.multi_objective:
        trial = data.best[0]
        config, rebuilt = trial_config(data, trial)
        runnable = runnable_config(data, config)
        return (
            "\n".join(_header_lines(data, trial, rebuilt, db_path)) + "\n"
            + "# the config the function received, plus the settings of a one-trial study, so it is\n"
            + "# also a --config file: python your_script.py --config best.yaml runs it once as study "
            + f"{runnable['experiment_name']}_{runnable['tag']}\n"
            + "# (or in-process, no database: python your_script.py --best, or train(yaml.safe_load(...)))\n"
            + dump_yaml(runnable)
        )
    docs = []
    for trial in data.best:
        config, rebuilt = trial_config(data, trial)
        header = "\n".join(_header_lines(data, trial, rebuilt, db_path))
        docs.append(f"---\n{header}\n{dump_yaml(config)}")
    return "".join(docs)


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


def best_json(data: StudyData) -> str:
    """The best trial's config as JSON; a list of ``{trial, values, config}`` for a Pareto front."""
    if not data.multi_objective:
        return json.dumps(trial_config(data, data.best[0])[0], indent=2)
    return json.dumps(
        [
            {"trial": t.number, "values": list(t.values or []), "config": trial_config(data, t)[0]}
            for t in data.best
        ],
        indent=2,
    )


def format_table(columns: list[str], rows: list[list[Any]], reason_width: int = 60) -> str:
    """The trials table as aligned text (``hparam-joblib trials``): short values, long reasons cut,
    no datetimes or log paths (``--csv`` has every column)."""
    def cell(column: str, value: Any) -> str:
        if value is None:
            return ""
        if column == "duration_s" and isinstance(value, float):
            return f"{value:.2f}"
        if column == "peak_rss_mib" and isinstance(value, (int, float)):
            return f"{value:.0f}"
        text = fmt_value(value)
        if column == "failure_reason" and len(text) > reason_width:
            text = text[: reason_width - 3] + "..."
        return text

    # Datetimes and log paths are long: the CSV has them.
    keep = [i for i, c in enumerate(columns) if c not in ("datetime_start", "datetime_complete", "log_file")]
    head = [columns[i].removeprefix("params_") for i in keep]
    body = [[cell(columns[i], row[i]) for i in keep] for row in rows]
    widths = [max([len(h)] + [len(r[j]) for r in body]) for j, h in enumerate(head)]
    numeric = [all(_is_number(r[j]) for r in body if r[j]) for j in range(len(head))]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(head), *(line(r) for r in body)])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """A CSV cell: empty for ``None``, exact ``repr`` for floats, JSON for lists and dicts."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value

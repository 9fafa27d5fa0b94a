"""The text of the results commands: ``status``, ``best`` (YAML or JSON), the ``trials`` table
and its CSV cells, from the plain data ``_read`` takes from a study. No I/O here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial

from hparam_joblib._keys import ERROR, INTERRUPTED, OUT_OF_MEMORY, OUT_OF_MEMORY_BESIDE, TIMEOUT, WORKER_DIED
from hparam_joblib.config._yaml import dump_yaml
from hparam_joblib.results._read import (
    StudyData,
    Throughput,
    failure_groups,
    heartbeat_interval,
    launch_rows,
    runnable_config,
    running_trials,
    runs,
    state_counts,
    throughput,
    trial_config,
)
from hparam_joblib.runtime._failures import LABELS, trial_kind

#: How many Pareto-optimal / running trials ``status`` lists before "... and N more".
LIST_LIMIT = 10


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
    target = f"; {n_finished}/{planned} of n_trials finished (COMPLETE + PRUNED)" if isinstance(planned, int) else ""
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
    lines.extend(launch_lines(data))

    lines += _failure_lines(data)
    return "\n".join(lines)


def launch_lines(data: StudyData) -> list[str]:
    """``launches:`` one line per launch of the study (the newest :data:`LIST_LIMIT`): where it
    ran (host, pid, SLURM job or array task), its trials and how it ended, so that a dead array
    task shows."""
    rows = launch_rows(data)
    if not rows:
        return []
    lines = [f"launches:   {len(rows)}" + (f" (the last {LIST_LIMIT} shown)" if len(rows) > LIST_LIMIT else "")]
    for row in rows[-LIST_LIMIT:]:
        counts = ", ".join(f"{k} {v}" for k, v in row.counts.items()) or "none"
        lines.append(f"  run {row.run} on {row.where}, started {row.started}: trials {counts}; {row.ended}")
    return lines


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


#: How each kind of trial that did not complete is accounted, for ``status``.
_ACCOUNTED = {
    ERROR: "PRUNED, counted toward n_trials; after a fix, --retry-failed re-runs them",
    TIMEOUT: "PRUNED, counted toward n_trials",
    WORKER_DIED: "FAIL, not counted: re-run",
    INTERRUPTED: "FAIL, not counted: re-run",
    OUT_OF_MEMORY: "PRUNED, counted toward n_trials: the configuration does not fit in memory alone",
    OUT_OF_MEMORY_BESIDE: "FAIL, not counted: re-run with fewer trials at once",
}


def _failure_lines(data: StudyData) -> list[str]:
    """Pruner decisions apart from failures; failures by kind (error, timeout, worker died,
    interrupted, out of memory alone or beside other trials), each by reason; the trials
    retired by --retry-failed."""
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
    failed = [k for k in _ACCOUNTED if by_kind.get(k)]
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
        if column in ("peak_rss_mib", "peak_gpu_mib") and isinstance(value, (int, float)):
            return f"{value:.0f}"
        text = fmt_value(value)
        if column == "failure_reason" and len(text) > reason_width:
            text = text[: reason_width - 3] + "..."
        return text

    # Datetimes and log paths are long: the CSV has them.
    # GPU memory only where a trial recorded it (a CPU search gets no empty column).
    no_gpu = "peak_gpu_mib" in columns and all(r[columns.index("peak_gpu_mib")] is None for r in rows)
    drop = ("datetime_start", "datetime_complete", "log_file") + (("peak_gpu_mib",) if no_gpu else ())
    keep = [i for i, c in enumerate(columns) if c not in drop]
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

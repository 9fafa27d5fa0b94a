"""The launcher's progress bar (finished/total, best so far, ETA) and the final summary."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from hparam_joblib._keys import (
    ERROR,
    INTERRUPTED,
    OUT_OF_MEMORY,
    OUT_OF_MEMORY_BESIDE,
    PRUNER,
    TIMEOUT,
    WORKER_DIED,
)
from hparam_joblib._logging import tqdm_class
from hparam_joblib.runtime._failures import LABELS, SHORT, kind_counts
from hparam_joblib.storage import n_finished

#: How many Pareto-optimal trials the summary lists.
PARETO_SHOWN = 5

if TYPE_CHECKING:
    from hparam_joblib._result import SearchResult
    from hparam_joblib.storage import StudyStore


class Progress:
    """A tqdm bar fed by polling the study's state counts (workers never talk to it)."""

    def __init__(
        self, total: int, initial: int, direction: str, *, enabled: bool = True, show_best: bool = True,
        offset: int = 0,
    ) -> None:
        self.direction = direction
        #: Finished trials that do not count (retired by --retry-failed).
        self.offset = offset
        self._kinds: dict[str, int] = {}
        self._failed_seen = -1
        #: Trials run at once after memory ran out (None: n_jobs, never lowered).
        self.at_once: int | None = None
        #: ``auto 2`` with ``n_jobs: auto`` (the cores or devices it started from), else "".
        self.n_jobs_auto = ""
        self.interactive = False
        self.show_best = show_best  # False for several objectives: there is no single best
        self.bar: Any = None
        if enabled:
            tqdm = tqdm_class()  # its lock set first (a thread lock)
            notebook_bar = _notebook_tqdm()
            if notebook_bar is not None:  # a widget in the cell's output, redrawn in place
                self.interactive = True
                self.bar = notebook_bar(
                    total=total, initial=min(initial, total), unit="trial", desc="trials", mininterval=0.5,
                )
                return
            # On a terminal the bar redraws in place; in a log file (CI, nohup, a scheduler) each
            # redraw is kept, so redraw at most every 30 s there.
            interactive = sys.stderr.isatty()
            self.interactive = interactive
            self.bar = tqdm(
                total=total, initial=min(initial, total), unit="trial", desc="trials",
                dynamic_ncols=True, file=sys.stderr, mininterval=0.5 if interactive else 30,
            )

    def update(self, storage: StudyStore, study_id: int) -> None:
        """Poll the database once and move the bar."""
        if self.bar is None:
            return
        counts = storage.count_states(study_id)
        finished = n_finished(counts) - self.offset
        delta = min(finished, self.bar.total) - self.bar.n
        postfix: dict[str, Any] = {"running": counts.get("RUNNING", 0)}
        if self.n_jobs_auto:
            postfix["n_jobs"] = self.n_jobs_auto
        if self.at_once is not None:
            postfix["at_once"] = f"{self.at_once} (memory)"
        if self.show_best and counts.get("COMPLETE", 0):
            try:
                best = storage.get_best_trial(study_id)
                postfix["best"] = f"{best.value:.6g}"
            except (ValueError, RuntimeError):
                pass
        postfix.update(self._kind_postfix(storage, study_id, counts))
        self.bar.set_postfix(postfix, refresh=False)
        if delta > 0:
            self.bar.update(delta)  # redraws when mininterval has passed
        elif self.interactive:
            self.bar.refresh()  # keep the clock and the running count moving on a terminal

    def _kind_postfix(self, storage: StudyStore, study_id: int, counts: dict[str, int]) -> dict[str, int]:
        """``errors``, ``pruned`` (by the pruner), ``timeouts``, ``worker_died``: read again only
        when the PRUNED or FAIL count moved."""
        failed = counts.get("PRUNED", 0) + counts.get("FAIL", 0)
        if failed and failed != self._failed_seen:
            self._kinds = kind_counts(storage, study_id)
            if self.offset and ERROR in self._kinds:  # retired errors are not this study's count
                self._kinds[ERROR] -= self.offset
            self._failed_seen = failed
        return {SHORT[k]: v for k, v in self._kinds.items() if v > 0}

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (ipykernel's shell), False in a terminal, a script or IPython."""
    shell_module = sys.modules.get("IPython")
    if shell_module is None:
        return False
    try:
        shell = shell_module.get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython: not a notebook
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _notebook_tqdm() -> Any:
    """tqdm's notebook bar in a Jupyter kernel with ipywidgets, else None (the text bar is used)."""
    if not in_notebook():
        return None
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook needs it, or it prints a plain repr)
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:
        return None
    return notebook_tqdm


def dashboard_command(db_path: str) -> str:
    """The exact ``optuna-dashboard sqlite:///...`` command; relative when under the cwd."""
    return f"optuna-dashboard sqlite:///{dashboard_db(db_path)}"


def format_summary(result: SearchResult, verbose: bool = False) -> str:
    """The multi-line summary printed when a search ends (storage latency only when ``verbose``)."""
    status = "interrupted" if result.interrupted else "stopped" if result.stop_reason else "done"
    lines = [
        (
            f"hparam_joblib: study {result.study_name} {status}: "
            f"{result.n_finished}/{result.n_trials} finished ({_finished_counts(result)}) in {result.wall_time:.1f} s"
        ),
    ]
    lines += _kind_lines(result)
    if result.multi_objective:
        lines += _pareto_lines(result)
    elif result.best_value is not None:
        lines.append(f"  best value:   {result.best_value:.6g} (trial {result.best_trial_number})")
        params = ", ".join(f"{k}={v!r}" for k, v in result.best_params.items())
        lines.append(f"  best params:  {params or '(none: no sweep parameters)'}")
    else:
        lines.append("  best value:   none yet (no trial completed)")
    if result.stop_reason:
        lines.insert(1, f"  stopped by:   {result.stop_reason}; the same command continues the search")
    lines.extend(_storage_lines(result, verbose))
    if result.n_jobs_auto:
        lines.append(f"  n_jobs auto:  {result.n_jobs_auto}")
    if result.at_once:
        lines.append(f"  at once:      {result.at_once} trial(s) after one was killed for memory beside others "
                     f"(n_jobs was the most)")
    if result.trial_processes:
        lines.append(f"  trial procs:  {result.trial_processes} ({_threads_text(result)})")
    if result.log_dir and result.trials_run:
        lines.append(f"  trial logs:   {dashboard_db(result.log_dir)}/trial_NNNNN.log")
    lines.append(f"  database:     {result.db_path}" + (f" ({result.db_reason})" if result.db_reason else ""))
    lines.append(f"  dashboard:    {_dashboard_for(result)}")
    return "\n".join(lines)


def _finished_counts(result: SearchResult) -> str:
    """What ``n_finished`` counts (COMPLETE + PRUNED, less the retired, as the budget counts), then
    what else the study holds, not counted: ``COMPLETE 7, PRUNED 3; FAIL 2 not counted``."""
    counts = result.counts
    finished = [f"{state} {counts[state]}" for state in ("COMPLETE", "PRUNED") if counts.get(state)]
    if result.retired:
        finished.append(f"less {result.retired} retired")
    others = [f"{state} {n}" for state, n in sorted(counts.items()) if state not in ("COMPLETE", "PRUNED") and n]
    text = ", ".join(finished) or "none"
    return text + (f"; {', '.join(others)} not counted" if others else "")


def _threads_text(result: SearchResult) -> str:
    """The threads the trials really ran (busy in one trial, at most), their cores and the cap:
    ``threads seen: at most 1 busy in a trial; 1 core each; capped at 1 thread``."""
    cap = result.threads_per_trial
    parts = []
    if result.threads_seen:
        seen = f"threads seen: at most {result.threads_seen} busy in a trial"
        if cap and result.threads_seen > cap:
            seen += f", above the cap of {cap} (a library sized its own pool)"
        parts.append(seen)
    cores = result.cores_per_trial
    if cores:
        counts = str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"
        parts.append(f"{counts} core{'s' if cores[-1] != 1 else ''} each")
    if not cap:
        parts.append("threads as exported")
    elif not result.threads_seen or result.threads_seen <= cap:
        parts.append(f"capped at {cap} thread{'s' if cap != 1 else ''}")
    return "; ".join(parts)


def _storage_lines(result: SearchResult, verbose: bool) -> list[str]:
    """Lock retries and, at --verbose, the workers' storage latency."""
    ops = result.storage_ops
    if verbose:
        latency = (
            f" (workers' storage calls: {int(ops['count'])}, p50 {ops['p50_ms']:.1f} ms, p99 {ops['p99_ms']:.1f} ms)"
            if ops else ""
        )
        return [f"  lock retries: {result.lock_retries}{latency}"]
    return [f"  lock retries: {result.lock_retries}"]


def _kind_lines(result: SearchResult) -> list[str]:
    """Why trials did not complete, by kind (counted ones, then re-run ones), and the retired."""
    kinds = dict(result.kinds)
    if result.retired and kinds.get(ERROR):
        kinds[ERROR] -= result.retired
    counted = [f"{kinds[k]} {LABELS[k]}" for k in (ERROR, PRUNER, TIMEOUT, OUT_OF_MEMORY) if kinds.get(k)]
    rerun = [f"{kinds[k]} {LABELS[k]}" for k in (WORKER_DIED, INTERRUPTED, OUT_OF_MEMORY_BESIDE)
             if kinds.get(k)]
    lines = []
    if counted or rerun:
        text = "; ".join(filter(None, [
            ", ".join(counted) + (" (PRUNED, counted)" if counted else ""),
            ", ".join(rerun) + (" (FAIL, not counted, re-run)" if rerun else ""),
        ]))
        lines.append(f"  not complete: {text}")
    if result.retired:
        lines.append(
            f"  retired:      {result.retired} trial(s) that failed by an error before --retry-failed "
            "(kept as PRUNED, not counted)"
        )
    return lines


def _dashboard_for(result: SearchResult) -> str:
    """``optuna-dashboard`` with the storage: a SQLite URL, a journal file or a server URL
    (never with a password: libpq reads PGPASSWORD)."""
    url = result.storage_url
    if url.startswith("sqlite:///"):
        return dashboard_command(url.removeprefix("sqlite:///"))
    if "://" in url:
        return f"optuna-dashboard {url}"
    return f"optuna-dashboard {dashboard_db(url)}"


def _pareto_lines(result: SearchResult) -> list[str]:
    """The Pareto front, at most :data:`PARETO_SHOWN` trials (``hparam-joblib status`` lists more)."""
    directions = ", ".join(result.directions)
    if not result.best_trials:
        return [f"  pareto front: none yet (no trial completed; directions {directions})"]
    lines = [f"  pareto front: {len(result.best_trials)} trial(s) ({directions})"]
    for best in result.best_trials[:PARETO_SHOWN]:
        values = ", ".join(f"{v:.6g}" for v in best.values)
        params = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
        lines.append(f"    trial {best.number}: [{values}]  {params}")
    if len(result.best_trials) > PARETO_SHOWN:
        lines.append(
            f"    ... and {len(result.best_trials) - PARETO_SHOWN} more "
            f"(hparam-joblib status {dashboard_db(result.db_path)})"
        )
    return lines


def dashboard_db(db_path: str) -> str:
    """The database path as the user would type it (relative when under the cwd)."""
    rel = os.path.relpath(db_path)
    return db_path if rel.startswith("..") else rel

"""The launcher's progress bar (finished/total, best so far, ETA) and the final summary."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from hparam_joblib._result import SearchResult
    from hparam_joblib._storage import SearchStorage


class Progress:
    """A tqdm bar fed by polling the study's state counts (workers never talk to it)."""

    def __init__(self, total: int, initial: int, direction: str, *, enabled: bool = True) -> None:
        self.direction = direction
        self.bar: Any = None
        if enabled:
            self.bar = tqdm(
                total=total, initial=min(initial, total), unit="trial", desc="trials",
                dynamic_ncols=True, file=sys.stderr, mininterval=0.5,
            )

    def update(self, storage: SearchStorage, study_id: int) -> None:
        """Poll the database once and move the bar."""
        if self.bar is None:
            return
        counts = storage.count_states(study_id)
        finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        delta = min(finished, self.bar.total) - self.bar.n
        postfix = {"running": counts.get("RUNNING", 0)}
        if counts.get("COMPLETE", 0):
            try:
                best = storage.get_best_trial(study_id)
                postfix["best"] = f"{best.value:.6g}"
            except (ValueError, RuntimeError):
                pass
        if counts.get("PRUNED", 0):
            postfix["pruned"] = counts["PRUNED"]
        self.bar.set_postfix(postfix, refresh=False)
        if delta > 0:
            self.bar.update(delta)
        else:
            self.bar.refresh()

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def dashboard_command(db_path: str) -> str:
    """The exact ``optuna-dashboard sqlite:///...`` command; relative when under the cwd."""
    rel = os.path.relpath(db_path)
    if rel.startswith(".."):
        return f"optuna-dashboard sqlite:///{db_path}"
    return f"optuna-dashboard sqlite:///{rel}"


def format_summary(result: SearchResult) -> str:
    """The multi-line summary printed when a search ends."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "no trials"
    status = "interrupted" if result.interrupted else "done"
    lines = [
        f"hparam_joblib: study {result.study_name} {status}: "
        f"{result.n_finished}/{result.n_trials} finished ({counts}) in {result.wall_time:.1f} s",
    ]
    if result.best_value is not None:
        lines.append(f"  best value:   {result.best_value:.6g} (trial {result.best_trial_number})")
        params = ", ".join(f"{k}={v!r}" for k, v in result.best_params.items())
        lines.append(f"  best params:  {params}")
    else:
        lines.append("  best value:   none yet (no trial completed)")
    lines.append(f"  lock retries: {result.lock_retries}")
    lines.append(f"  database:     {result.db_path}")
    lines.append(f"  dashboard:    {dashboard_command(result.db_path)}")
    return "\n".join(lines)

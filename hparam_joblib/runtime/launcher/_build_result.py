"""The :class:`SearchResult` of a run: counts, the best trial(s), what the workers reported."""

from __future__ import annotations

import time
from pathlib import Path

import optuna

from hparam_joblib._keys import CONFIG_KEY
from hparam_joblib._result import BestTrial, SearchResult
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.results._read import best_front
from hparam_joblib.runtime._failures import kind_counts
from hparam_joblib.runtime.loops._task import WorkerReport
from hparam_joblib.storage import StorageLocation, StudyStore


def build_result(
    study: optuna.Study,
    storage: StudyStore,
    cfg: SearchConfig,
    location: StorageLocation,
    started: float,
    reports: list[WorkerReport],
    interrupted: int,
    n_retired: int = 0,
    log_dir: Path | None = None,
    at_once: int = 0,
    lowest_at_once: int = 0,
) -> SearchResult:
    """The search's result as the summary and the caller see it."""
    counts = storage.count_states(study._study_id)
    front = best_front(study, cfg.multi_objective)
    best = front[0] if front and not cfg.multi_objective else None
    return SearchResult(
        study_name=cfg.study_name,
        storage_url=location.public_url,
        db_path=location.display,
        n_trials=cfg.n_trials,
        counts=counts,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        best_config={} if best is None else dict(best.user_attrs.get(CONFIG_KEY, {})),
        best_trial_number=None if best is None else best.number,
        wall_time=time.monotonic() - started,
        lock_retries=storage.lock_retries + sum(r.lock_retries for r in reports),
        trials_run=sum(r.trials_run for r in reports),
        interrupted=bool(interrupted),
        worker_pids=tuple(sorted({r.pid for r in reports})),
        stop_signal=interrupted,
        storage_ops=latency([t for r in reports for t in r.op_seconds]),
        peak_trial_mib=max((r.peak_trial_mib for r in reports), default=0.0),
        directions=tuple(cfg.directions),
        best_trials=tuple(
            BestTrial(
                number=t.number, values=tuple(t.values or ()), params=dict(t.params),
                config=dict(t.user_attrs.get(CONFIG_KEY, {})),
            )
            for t in front
        ),
        kinds=kind_counts(storage, study._study_id),
        retired=n_retired,
        trial_processes=sum(r.trial_processes for r in reports),
        threads_per_trial=max((r.threads for r in reports), default=0),
        threads_seen=max((r.threads_seen for r in reports), default=0),
        cores_per_trial=tuple(sorted({r.cores for r in reports if r.cores})),
        log_dir="" if log_dir is None else str(log_dir),
        at_once=at_once if 0 < at_once < cfg.n_jobs else 0,
        n_jobs_auto=_auto_text(cfg, reports, at_once, lowest_at_once) if cfg.n_jobs_auto else "",
    )


def _auto_text(cfg: SearchConfig, reports: list[WorkerReport], at_once: int = 0, lowest: int = 0) -> str:
    """What ``n_jobs: auto`` chose and why, for the summary and the run history."""
    what = f"{len(cfg.gpus)} device(s)" if cfg.gpus else "the cores"
    text = f"up to {cfg.n_jobs} at once ({what})"
    waits = sum(r.memory_waits for r in reports)
    peak = max((r.peak_trial_mib for r in reports), default=0.0)
    if waits:
        text += f"; {waits} trial start(s) waited until memory held another trial"
    if peak:
        text += f" (largest trial peak {peak:.0f} MiB)"
    if 0 < lowest < cfg.n_jobs:
        text += f"; out of memory with more at once: lowered to {lowest}"
        if at_once > lowest:
            text += f", back up to {at_once} as memory held more"
    return text


def latency(samples: list[float]) -> dict[str, float]:
    """Count, median, 99th percentile and maximum of storage-operation times, in ms."""
    if not samples:
        return {}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"count": float(len(ordered)), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": ordered[-1] * 1000}

"""The launcher: create the study once, start n_jobs loky workers, supervise them, summarise.

The launcher owns the schema (workers open the file without creating tables), Ctrl-C and
SIGTERM (workers ignore SIGINT; the launcher kills them and fails their RUNNING trials), and
worker deaths (it fails the dead workers' trials and starts new workers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from types import FrameType
from typing import Any, cast

import optuna
from loky import get_reusable_executor
from loky.process_executor import BrokenProcessPool, TerminatedWorkerError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from hparam_joblib._config import SearchConfig
from hparam_joblib._errors import HparamError, StorageError
from hparam_joblib._progress import Progress
from hparam_joblib._result import BestTrial, SearchResult
from hparam_joblib._storage import (
    BudgetExhausted,
    RetryPolicy,
    StorageLocation,
    StudyStore,
    fail_trial,
    n_finished,
    reap_dead_owners,
)
from hparam_joblib._storage_factory import location_for, open_storage, preflight, prepare
from hparam_joblib._worker import WorkerReport, WorkerTask, worker_main

logger = logging.getLogger("hparam_joblib")

_POLL_SECONDS = 0.5
_MAX_RESTARTS_WITHOUT_PROGRESS = 3
#: Study system attr: keys of the ``enqueue`` entries already queued (see :func:`enqueue_keys`).
ENQUEUED_KEY = "hparam_joblib:enqueued"


class WorkerCrashError(HparamError):
    """Worker processes kept dying without finishing any trial."""


class _Terminated(Exception):
    """SIGTERM reached the launcher."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def db_path_for(cfg: SearchConfig, save_dir: Path) -> Path:
    """``<save_db_directory>/<experiment_name>_<tag>.db``."""
    return save_dir / f"{cfg.study_name}.db"


def storage_display(cfg: SearchConfig, save_dir: Path) -> str:
    """Where the study lives, as shown to the user: a file, or a URL without its password."""
    if cfg.storage.kind == "sqlite":
        return str(db_path_for(cfg, save_dir))
    location = location_for(cfg, save_dir)
    return f"journal:{location.path}" if location.kind == "journal" else location.display


def run_search(
    func: Callable[[dict[str, Any]], Any],
    cfg: SearchConfig,
    save_dir: Path,
    *,
    policy: RetryPolicy | None = None,
    show_progress: bool = True,
    time_limit: float | None = None,
) -> SearchResult:
    """Run (or resume) the search until the study holds ``cfg.n_trials`` finished trials.

    Raises:
        StorageError: the database cannot be used (checked before anything is written).
        WorkerCrashError: workers died repeatedly without finishing a trial.
    """
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    policy = policy or RetryPolicy(deadline=cfg.lock_timeout, busy_timeout=min(10.0, cfg.lock_timeout / 2))
    location = location_for(cfg, save_dir)
    preflight(location, cfg.study_name, list(cfg.directions))
    if location.kind == "sqlite":
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(str(save_dir), f"cannot create the save directory ({err.strerror})") from err
    prepare(location, policy)
    storage = open_storage(location, create_tables=True, policy=policy, heartbeat_interval=cfg.heartbeat_interval)
    storage.add_budget_index()
    storage.family = os.getpid()
    # The pruner is not stored in the database: each worker builds its own (it is consulted by
    # the worker whose trial reports), so the launcher's study needs none.
    study = optuna.create_study(
        storage=cast(BaseStorage, storage), study_name=cfg.study_name, directions=_directions(cfg), load_if_exists=True
    )
    study.set_user_attr("config", _jsonable(cfg.resolved))
    study_id = study._study_id
    reaped = reap_dead_owners(storage, study_id)
    if reaped:
        logger.info("marked %d trial(s) left RUNNING by a dead process as FAIL: %s", len(reaped), reaped)
    if cfg.enqueue:
        _enqueue(study, storage, cfg)

    run_id = uuid.uuid4().hex[:12]
    reports: list[WorkerReport] = []
    interrupted = 0
    if n_finished(storage.count_states(study_id)) < cfg.n_trials:
        deadline = None if time_limit is None else time.time() + time_limit
        interrupted = _supervise(
            func, cfg, location, storage, study_id, run_id, policy, reports, show_progress, deadline
        )
    else:
        logger.info("study %s already holds %d finished trials; nothing to run", cfg.study_name, cfg.n_trials)
    result = _result(study, storage, cfg, location, started, reports, interrupted)
    return result


def enqueue_keys(entries: tuple[Mapping[str, Any], ...]) -> list[str]:
    """A stable key per ``enqueue`` entry: a hash of its values, and its occurrence number
    (so that the same entry listed twice is queued twice, and reordering does not re-queue)."""
    keys = []
    seen: dict[str, int] = {}
    for entry in entries:
        digest = hashlib.sha256(json.dumps(_jsonable(entry), sort_keys=True).encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        keys.append(f"{digest}#{seen[digest]}")
    return keys


def _enqueue(study: optuna.Study, storage: StudyStore, cfg: SearchConfig) -> None:
    """Queue the ``enqueue`` entries not queued by an earlier run; each takes a budget slot.

    What was queued is recorded in the study's system attr :data:`ENQUEUED_KEY`, entry by
    entry, so a resumed (or interrupted) search never queues an entry twice.
    """
    done = list(storage.get_study_system_attrs(study._study_id).get(ENQUEUED_KEY, []))
    queued = 0
    for key, entry in zip(enqueue_keys(cfg.enqueue), cfg.enqueue):
        if key in done:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(dict(entry))
        except BudgetExhausted:
            logger.warning(
                "enqueue: %d entr%s not queued: all %d trials of the budget are taken",
                len(cfg.enqueue) - len(done), "y" if len(cfg.enqueue) - len(done) == 1 else "ies", cfg.n_trials,
            )
            break
        done.append(key)
        storage.set_study_system_attr(study._study_id, ENQUEUED_KEY, done)
        queued += 1
    if queued:
        logger.info("enqueue: queued %d trial(s) to run first", queued)


def _directions(cfg: SearchConfig) -> list[StudyDirection]:
    return [StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in cfg.directions]


def _supervise(
    func: Callable[[dict[str, Any]], Any],
    cfg: SearchConfig,
    location: StorageLocation,
    storage: StudyStore,
    study_id: int,
    run_id: str,
    policy: RetryPolicy,
    reports: list[WorkerReport],
    show_progress: bool,
    deadline: float | None = None,
) -> int:
    """Start and watch the workers; returns the signal number that stopped us, or 0."""
    counts = storage.count_states(study_id)
    progress = Progress(
        cfg.n_trials, n_finished(counts), cfg.direction, enabled=show_progress,
        show_best=not cfg.multi_objective,
    )
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    # Installed explicitly: a launcher started in the background of a script inherits SIGINT
    # ignored, and Ctrl-C / kill -INT must still stop it cleanly.
    previous = _install_handlers(
        {signal.SIGTERM: on_sigterm, signal.SIGINT: signal.default_int_handler}
    )
    generation = 0
    restarts_without_progress = 0
    executor = None
    try:
        while True:
            # No more workers than trials left: --set n_trials=110 after 100 starts 10, not 32.
            remaining = cfg.n_trials - n_finished(storage.count_states(study_id))
            n_workers = max(1, min(cfg.n_jobs, remaining))
            executor = get_reusable_executor(max_workers=n_workers, timeout=300, reuse=True)
            futures: list[Future[WorkerReport]] = [
                executor.submit(
                    worker_main,
                    WorkerTask(
                        func=func, config=cfg, location=location, run_id=run_id,
                        launcher_pid=os.getpid(), worker_index=generation * cfg.n_jobs + i,
                        policy=policy, deadline=deadline,
                    ),
                )
                for i in range(n_workers)
            ]
            finished_before = n_finished(storage.count_states(study_id))
            crashed = _watch(futures, storage, study_id, progress, reports)
            if not crashed:
                # Idle workers would otherwise be joined at interpreter exit, seconds later.
                executor.shutdown(wait=True)
                return 0
            reaped = reap_dead_owners(storage, study_id)
            logger.warning(
                "a worker process died (%s); %d running trial(s) marked FAIL and will be re-run; "
                "starting new workers", crashed, len(reaped),
            )
            if n_finished(storage.count_states(study_id)) > finished_before:
                restarts_without_progress = 0
            else:
                restarts_without_progress += 1
            if restarts_without_progress >= _MAX_RESTARTS_WITHOUT_PROGRESS:
                raise WorkerCrashError(
                    f"worker processes died {restarts_without_progress} times in a row without "
                    f"finishing a trial (last: {crashed})"
                )
            generation += 1
    except HparamError as err:
        progress.close()
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
        _fail_run_trials(storage, study_id, run_id, f"the search stopped: {err}")
        raise
    except (KeyboardInterrupt, _Terminated) as stop:
        signum = signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT
        progress.close()
        logger.warning("%s: stopping the workers", signal.Signals(signum).name)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
        _fail_run_trials(storage, study_id, run_id, f"interrupted by {signal.Signals(signum).name}")
        return int(signum)
    finally:
        _install_handlers(previous)
        progress.close()


def _install_handlers(handlers: dict[Any, Any]) -> dict[Any, Any]:
    """Install signal handlers (main thread only); returns the previous ones."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}


def _watch(
    futures: list[Future[WorkerReport]],
    storage: StudyStore,
    study_id: int,
    progress: Progress,
    reports: list[WorkerReport],
) -> str:
    """Wait for the workers, updating the progress bar; returns why they crashed, or ''."""
    pending = set(futures)
    crashed = ""
    while pending:
        done, pending = wait(pending, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
        for future in done:
            try:
                reports.append(future.result())
            except HparamError:
                raise  # e.g. the database stayed locked past lock_timeout: stop the search
            except (TerminatedWorkerError, BrokenProcessPool) as err:
                crashed = str(err).splitlines()[0][:200]
            except Exception as err:  # a worker's own bug: log it, fail its trial, restart
                logger.error("a worker failed: %s: %s", type(err).__name__, err, exc_info=err)
                crashed = f"{type(err).__name__}: {str(err)[:200]}"
        progress.update(storage, study_id)
    return crashed


def _fail_run_trials(storage: StudyStore, study_id: int, run_id: str, reason: str) -> None:
    """Fail this launch's RUNNING trials once its workers are dead (best effort)."""
    try:
        for trial_id, _number, owner in storage.running_owners(study_id):
            if owner.get("run") == run_id:
                fail_trial(storage, trial_id, reason)
    except HparamError as err:  # the next launch reaps them (their owners are dead)
        logger.warning("could not mark this run's trials FAIL now (%s); the next run will", err)


def _result(
    study: optuna.Study,
    storage: StudyStore,
    cfg: SearchConfig,
    location: StorageLocation,
    started: float,
    reports: list[WorkerReport],
    interrupted: int,
) -> SearchResult:
    counts = storage.count_states(study._study_id)
    best_value = None
    best_params: dict[str, Any] = {}
    best_config: dict[str, Any] = {}
    best_number = None
    front: list[FrozenTrial] = []
    try:
        if cfg.multi_objective:
            front = sorted(study.best_trials, key=lambda t: t.number)
        else:
            front = [study.best_trial]
    except ValueError:
        front = []
    if front and not cfg.multi_objective:
        best = front[0]
        best_value = best.value
        best_params = dict(best.params)
        best_config = dict(best.user_attrs.get("config", {}))
        best_number = best.number
    best_trials = tuple(
        BestTrial(
            number=t.number, values=tuple(t.values or ()), params=dict(t.params),
            config=dict(t.user_attrs.get("config", {})),
        )
        for t in front
    )
    return SearchResult(
        study_name=cfg.study_name,
        storage_url=location.public_url if location.is_server else (
            location.path if location.kind == "journal" else f"sqlite:///{location.path}"
        ),
        db_path=location.display,
        n_trials=cfg.n_trials,
        counts=counts,
        best_value=best_value,
        best_params=best_params,
        best_config=best_config,
        best_trial_number=best_number,
        wall_time=time.monotonic() - started,
        lock_retries=storage.lock_retries + sum(r.lock_retries for r in reports),
        trials_run=sum(r.trials_run for r in reports),
        interrupted=bool(interrupted),
        worker_pids=tuple(sorted({r.pid for r in reports})),
        stop_signal=interrupted,
        storage_ops=_latency([t for r in reports for t in r.op_seconds]),
        peak_trial_mib=max((r.peak_trial_mib for r in reports), default=0.0),
        directions=tuple(cfg.directions),
        best_trials=best_trials,
    )


def _latency(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"count": float(len(ordered)), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": ordered[-1] * 1000}

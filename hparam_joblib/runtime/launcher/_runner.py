"""The launcher: create the study once, start n_jobs worker loops (loky or Dask), supervise, summarise.

The launcher owns the schema (workers open the file without creating tables), Ctrl-C and
SIGTERM (workers ignore SIGINT; the launcher stops them and fails their RUNNING trials), and
worker deaths (it fails the dead workers' trials with a reason, says so, starts new loops, and
stops the search after ``max_worker_deaths`` deaths in a row without a finished trial).
Which engine runs the loops is decided in ``_backend`` only; watching them is ``_supervise``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection

from hparam_joblib._errors import HparamError, UsageError, one_line
from hparam_joblib._result import SearchResult
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime._allocation import allocated_cores, cores_source
from hparam_joblib.runtime._failures import count_errors, retire_errors, retired
from hparam_joblib.runtime._history import (
    append_run,
    changes_note,
    check_space,
    end_run,
    previous_run,
    run_entry,
    settings_changes,
)
from hparam_joblib.runtime._signals import install_handlers, search_done, stop_handlers
from hparam_joblib.runtime._tracking import finish_parent, start_parent
from hparam_joblib.runtime.launcher._build_result import build_result
from hparam_joblib.runtime.launcher._enqueue import enqueue
from hparam_joblib.runtime.launcher._launch import Launch
from hparam_joblib.runtime.launcher._stop_state import StopState
from hparam_joblib.runtime.launcher._supervise import Supervisor
from hparam_joblib.runtime.loops._backend import Backend, make_backend
from hparam_joblib.runtime.loops._startup import trial_threads
from hparam_joblib.runtime.loops._task import WorkerReport
from hparam_joblib.runtime.trial._funcref import make_ref
from hparam_joblib.runtime.trial._isolation import COUNT_VARS, THREAD_VARS
from hparam_joblib.storage import (
    RetryPolicy,
    StorageLocation,
    StudyStore,
    check_call_paths,
    check_directions,
    location_for,
    n_finished,
    open_storage,
    preflight,
    prepare,
    reap_dead_owners,
)

logger = logging.getLogger("hparam_joblib")


def storage_display(cfg: SearchConfig, save_dir: Path) -> str:
    """Where the study lives, as shown to the user: a file, or a URL without its password."""
    return location_for(cfg, save_dir).label


def log_dir_for(cfg: SearchConfig, save_dir: Path) -> Path:
    """``<save_db_directory>/<study>/``: the trial logs (``trial_00042.log``) and workers' messages."""
    return save_dir / cfg.study_name


def threads_display(cfg: SearchConfig, cores: int | None = None) -> str:
    """How many threads (and cores) each trial gets, and why (for --dry-run)."""
    if cores is None:
        cores = allocated_cores()
    threads = trial_threads(cfg, cfg.n_jobs, cores)
    why = ("threads_per_trial" if cfg.threads_per_trial is not None
           else f"{cores} {cores_source()} // n_jobs {cfg.n_jobs}")
    exported = [f"{var}={os.environ[var]}" for var in (*THREAD_VARS, *COUNT_VARS) if var in os.environ]
    text = (f"{threads} thread{'s' if threads != 1 else ''} per trial ({why}), also as its joblib.cpu_count() "
            f"and, where the cores split evenly, its CPU affinity")
    if exported:
        text += f"; exported, so kept: {', '.join(exported)}"
    return text


def run_search(
    func: Callable[[dict[str, Any]], Any],
    cfg: SearchConfig,
    save_dir: Path,
    *,
    policy: RetryPolicy | None = None,
    show_progress: bool = True,
    run_seconds: float | None = None,
    retry_failed: bool = False,
) -> SearchResult:
    """Run (or resume) the search until the study holds ``cfg.n_trials`` finished trials.

    With ``run_seconds`` (``--tune-n-jobs`` rungs), each loop starts trials for that many seconds
    counted from when its trial process is ready, so a slow start-up never eats a rung.

    With ``retry_failed``, the trials that failed by an error are retired first (kept PRUNED
    with their reason, no longer counted: see ``_failures``), so the run replaces them.

    Raises:
        StorageError: the database cannot be used (checked before anything is written).
        BackendError: the Dask scheduler is unreachable (checked before anything is created),
            or the cluster has no worker for too long.
        WorkerCrashError: ``max_worker_deaths`` workers died in a row without a finished trial.
        ConfigError: the search space conflicts with the trials the study holds.
        TrainingCodeError: the first ``max_trial_errors`` trials of the run failed by an error.
    """
    backend = make_backend(cfg)
    backend.open()
    try:
        # Workers start importing now, beside the storage and study set-up (closed on any error).
        backend.warm(max(1, min(cfg.n_jobs, cfg.n_trials)))
        return _run_search(func, cfg, save_dir, backend, policy, show_progress, run_seconds, retry_failed)
    finally:
        backend.close()


def _run_search(
    func: Callable[[dict[str, Any]], Any], cfg: SearchConfig, save_dir: Path, backend: Backend,
    policy: RetryPolicy | None, show_progress: bool, run_seconds: float | None, retry_failed: bool,
) -> SearchResult:
    """:func:`run_search` on an open backend: the storage and the study, the run, the result."""
    started = time.monotonic()
    try:
        function = make_ref(func)
    except TypeError as err:
        raise UsageError(str(err)) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    policy = policy or RetryPolicy(deadline=cfg.lock_timeout, busy_timeout=min(10.0, cfg.lock_timeout / 2))
    location = location_for(cfg, save_dir)
    check_call_paths(location.kind)  # Optuna's ask/tell/enqueue reach our budget (a scratch study)
    preflight(location, cfg.study_name, list(cfg.directions), cfg.allow_network_filesystem)
    prepare(location, policy)
    storage = open_storage(location, create_tables=True, policy=policy, heartbeat_interval=cfg.heartbeat_interval)
    ended: str | None = None  # how this launch ended, for its run history entry (once it has one)
    try:
        study = _create_study(cfg, location, storage)
        study_id = study._study_id
        run_id = uuid.uuid4().hex[:12]
        work, n_retired, launch_number = _begin_run(cfg, storage, study_id, run_id, location, retry_failed)
        ended = "stopped by an error"
        if cfg.enqueue:
            enqueue(study, storage, work)
        # The search's own stop rules (not --tune-n-jobs' rungs).
        stop_state = StopState(run_id, cfg.stop, None) if run_seconds is None and cfg.stop.active else None
        reports: list[WorkerReport] = []
        interrupted = 0
        at_once = lowest_at_once = 0
        tracking = None
        if n_finished(storage.count_states(study_id)) < work.n_trials:
            if cfg.mlflow is not None:
                tracking = start_parent(cfg.mlflow, cfg.study_name, storage, study_id, cfg.n_trials)
            launch = Launch(function, work, location, run_id, policy, log_dir_for(cfg, save_dir).resolve(),
                            _deadline(stop_state), run_seconds, tracking, launch_number)
            supervisor = Supervisor(launch, backend, storage, study_id, retired=n_retired, stop_state=stop_state,
                                    show_progress=show_progress)
            interrupted = supervisor.run()
            if not interrupted:  # the loops are done: a stop signal now must not undo that
                install_handlers(dict.fromkeys(stop_handlers(), search_done))
            reports = supervisor.reports
            at_once = supervisor.at_once
            lowest_at_once = supervisor.lowest_at_once
        else:
            _say_nothing_to_run(cfg, storage, study_id)
        result = build_result(
            study, storage, cfg, location, started, reports, interrupted, n_retired, log_dir_for(cfg, save_dir),
            at_once, lowest_at_once,
        )
        if stop_state is not None and not interrupted and result.n_finished < cfg.n_trials:
            result = dataclasses.replace(result, stop_reason=stop_state.summary())
        if tracking is not None:
            finish_parent(tracking, dict(result.counts), result.best_value, result.interrupted)
        ended = _how_it_ended(result, interrupted)
        return result
    except HparamError as err:
        if ended is not None:
            ended = f"stopped: {one_line(getattr(err, 'short', None) or err, 200)}"
        raise
    except KeyboardInterrupt:
        if ended is not None:
            ended = "interrupted"
        raise
    finally:
        if ended is not None:
            _record_end(storage, study_id, run_id, ended)
        # The kernel of a notebook runs the next search in this process: no connection of this
        # one stays open (they would wait for the garbage collector).
        storage.close()


def _how_it_ended(result: SearchResult, interrupted: int) -> str:
    """``done``, ``interrupted by SIGTERM``, ``stopped: <the stop rule>`` or ``ended with ...``,
    and how many trials ran at once when memory made it fewer than n_jobs."""
    how = _end_state(result, interrupted)
    if result.n_jobs_auto:
        how += f"; n_jobs auto: {result.n_jobs_auto}"
    if result.at_once:
        how += f"; ran at most {result.at_once} trial(s) at once after one was killed for memory beside others"
    return how


def _end_state(result: SearchResult, interrupted: int) -> str:
    if interrupted:
        return f"interrupted by {signal.Signals(interrupted).name}"
    if result.stop_reason:
        return f"stopped: {result.stop_reason}"
    if result.n_finished >= result.n_trials:
        return "done"
    return f"ended with {result.n_finished}/{result.n_trials} finished"


def _record_end(storage: StudyStore, study_id: int, run_id: str, how: str) -> None:
    """Record the launch's end in its history entry; a storage that fails now is only logged
    (the search's own outcome, or error, is what the user must see)."""
    try:
        end_run(storage, study_id, run_id, how)
    except Exception as err:  # noqa: BLE001 - e.g. the server went away with the search
        logger.debug("recording the end of run %s failed: %s", run_id, err)


def _create_study(cfg: SearchConfig, location: StorageLocation, storage: StudyStore) -> optuna.Study:
    """Create (or load) the study, its directions checked against the config.

    Raises:
        StorageError: the study holds other directions.
    """
    storage.add_budget_index()
    storage.family = os.getpid()
    directions = [StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in cfg.directions]
    # The pruner is not stored in the database: each worker builds its own (it is consulted by
    # the worker whose trial reports), so the launcher's study needs none.
    study = optuna.create_study(
        storage=cast(BaseStorage, storage), study_name=cfg.study_name, directions=directions, load_if_exists=True
    )
    # Again after creation: a launch that created the study between our pre-flight and here.
    check_directions(location.display, cfg.study_name, [d.name.lower() for d in study.directions],
                     list(cfg.directions))
    return study


def _deadline(stop_state: StopState | None) -> float | None:
    """``time.time()`` at which the ``timeout`` stop rule fires, counted from now; set on ``stop_state``."""
    if stop_state is None:
        return None
    timeout = stop_state.rules.timeout
    stop_state.deadline = None if timeout is None else time.time() + timeout
    return stop_state.deadline


def _say_nothing_to_run(cfg: SearchConfig, storage: StudyStore, study_id: int) -> None:
    """The study is done already: say so with what it holds, and how to re-run the trials that
    failed by an error."""
    done = retired(storage, study_id)
    errors = count_errors(storage, study_id, exclude=done)
    logger.info("%s; nothing to run%s", finished_text(cfg, storage.count_states(study_id), len(done)), (
        f"; {errors} of them failed by an error: after fixing the code, run the same command "
        "with --retry-failed to re-run those" if errors else ""
    ))


def finished_text(cfg: SearchConfig, counts: dict[str, int], n_retired: int) -> str:
    """``study s already holds 10 finished trials (COMPLETE 9, PRUNED 1) of n_trials=8`` and what
    else is stored, not counted (FAIL, retired): finished is COMPLETE + PRUNED, as the budget counts."""
    text = (
        f"study {cfg.study_name} already holds {n_finished(counts) - n_retired} finished trials "
        f"(COMPLETE {counts.get('COMPLETE', 0)}, PRUNED {counts.get('PRUNED', 0)}"
        + (f" less {n_retired} retired by --retry-failed" if n_retired else "")
        + f") of n_trials={cfg.n_trials}"
    )
    others = [f"{state} {n}" for state, n in sorted(counts.items()) if state not in ("COMPLETE", "PRUNED") and n]
    if others:
        text += f"; also stored, not counted: {', '.join(others)}"
    return text


def _begin_run(
    cfg: SearchConfig, storage: StudyStore, study_id: int, run_id: str, location: StorageLocation,
    retry_failed: bool,
) -> tuple[SearchConfig, int, int]:
    """Check the config against the study, reap dead trials, retire errors (``--retry-failed``)
    and record the run; returns the workers' config (budget: n_trials + retired), the number
    of retired trials and this launch's number in the study's run history.

    Raises:
        ConfigError: the search space conflicts with the study's trials (nothing written).
    """
    previous = previous_run(storage.get_study_user_attrs(study_id))
    held = storage.get_all_trials(study_id, deepcopy=False)
    check_space(cfg, held, previous, location.display)
    changes = settings_changes(previous, cfg)
    if changes:
        logger.warning("note: %s", changes_note(changes, cfg.study_name))
    reaped = reap_dead_owners(storage, study_id)
    if reaped:
        logger.info("marked %d trial(s) left RUNNING by a dead process as FAIL: %s", len(reaped), reaped)
    retried = retire_errors(storage, study_id) if retry_failed else []
    if retry_failed:
        logger.info(
            "--retry-failed: %s", f"{len(retried)} trial(s) that failed by an error kept as they are "
            f"(PRUNED, with their reason) and no longer counted; new trials replace them: {retried}"
            if retried else "no trial failed by an error; nothing to re-run",
        )
    # Retired trials stay in the study (PRUNED) but do not count: the workers' budget grows by them.
    n_retired = len(retired(storage, study_id))
    launch_number = append_run(storage, study_id, run_entry(cfg, run_id, len(held), changes, retried))
    return (dataclasses.replace(cfg, n_trials=cfg.n_trials + n_retired) if n_retired else cfg), n_retired, launch_number

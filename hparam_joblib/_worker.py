"""What runs inside one loky worker: a ``study.optimize`` loop on the shared SQLite study.

The worker reopens the storage from its path (no schema creation: the launcher did it), builds
its own sampler (with its derived seed) and pruner from the config, takes trials until the
shared budget is spent, runs each training call in a forked child (``_isolation``) whose
``report()`` calls it answers with the pruner's decision, and records failures as PRUNED with
their reason (and pruner decisions as PRUNED with ``pruned_step``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.storages import BaseStorage

from hparam_joblib._algorithms import build, worker_seed
from hparam_joblib._config import SearchConfig
from hparam_joblib._errors import HparamError
from hparam_joblib._isolation import Outcome, reap_exiting, run_isolated
from hparam_joblib._logging import setup as setup_logging
from hparam_joblib._space import build_config, suggest_all
from hparam_joblib._storage import (
    OWNER_KEY,
    BudgetExhausted,
    RetryPolicy,
    StorageLocation,
    StudyStore,
    n_finished,
    n_taken,
    owner_record,
    reap_dead_owners,
)
from hparam_joblib._storage_factory import open_storage

logger = logging.getLogger("hparam_joblib")

_WAIT_FOR_OTHERS_SECONDS = 0.25


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker needs; small and picklable (the function travels by cloudpickle)."""

    func: Callable[[dict[str, Any]], Any]
    config: SearchConfig
    #: Where the study lives (a server URL with its password: never printed; repr hides it).
    location: StorageLocation
    run_id: str
    launcher_pid: int
    worker_index: int
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: ``time.time()`` after which no new trial starts (``--tune-n-jobs`` rungs), or None.
    deadline: float | None = None


@dataclass(frozen=True)
class WorkerReport:
    """What a worker sends back when the budget is spent."""

    pid: int
    trials_run: int
    lock_retries: int
    lock_wait_seconds: float
    op_seconds: tuple[float, ...] = ()
    #: Peak resident memory of this worker's trial processes, in MiB (ru_maxrss of children).
    peak_trial_mib: float = 0.0


class _LauncherGone(Exception):
    """The launcher process died; this worker must stop."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _Objective:
    """The function handed to ``study.optimize``: sample, run isolated, translate the outcome."""

    def __init__(self, task: WorkerTask, storage: StudyStore) -> None:
        self.task = task
        self.storage = storage
        self.trials_run = 0
        self.warned_multi_report = False

    def launcher_gone(self) -> bool:
        return os.getppid() != self.task.launcher_pid

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        if self.launcher_gone():
            raise _LauncherGone("the launcher process is gone")
        if trial._trial_id not in self.storage.created_trial_ids:  # a queued trial, popped not created
            self.storage.set_trial_system_attr(trial._trial_id, OWNER_KEY, owner_record(self.task.run_id))
            self.storage.created_trial_ids.add(trial._trial_id)
        cfg = self.task.config
        sampled = suggest_all(trial, cfg.params)
        config = build_config(cfg.fixed, sampled)
        trial.set_user_attr("config", _jsonable(config))
        # Params, sampler attrs and the config in one write, before the trial runs: other
        # workers' samplers see a running trial's params, and the dashboard its config.
        self.storage.flush_trial(trial._trial_id)
        self.trials_run += 1

        def on_report(value: float, step: int) -> bool:
            if cfg.multi_objective:  # Optuna cannot record or prune these; config forbids a pruner
                if not self.warned_multi_report:
                    logger.warning("report() is ignored in a multi-objective search")
                    self.warned_multi_report = True
                return False
            trial.report(value, step)
            return trial.should_prune()

        outcome = run_isolated(
            self.task.func,
            config,
            trial_number=trial.number,
            timeout=cfg.trial_timeout,
            should_stop=self.launcher_gone,
            on_report=on_report,
        )
        if outcome.kind == "value" and outcome.value is not None:
            values, why = _fit_directions(outcome.value, len(cfg.directions))
            if values is not None:
                return values
            outcome = Outcome("error", reason=why, error_type="InvalidReturn")
        if outcome.kind == "stopped":
            reason = "the launcher process died while the trial ran; it will be re-run"
            trial.set_user_attr("failure_reason", reason)
            raise _LauncherGone(reason)
        if outcome.kind == "pruned":
            reason = f"pruned by the pruner at step {outcome.step}"
            trial.set_user_attr("failure_reason", reason)
            trial.set_user_attr("pruned_step", outcome.step)
            logger.info("Trial %d %s", trial.number, reason)
            raise optuna.TrialPruned(reason)
        _record_failure(trial, outcome)
        logger.warning("Trial %d pruned: %s", trial.number, outcome.reason)
        raise optuna.TrialPruned(outcome.reason)


def _fit_directions(value: float | list[float], n: int) -> tuple[float | list[float] | None, str]:
    """The value Optuna expects for ``n`` objectives, or None and why the return does not fit."""
    values = value if isinstance(value, list) else [value]
    if len(values) == n:
        return (values[0] if n == 1 else values), ""
    what = f"{len(values)} value{'' if len(values) == 1 else 's'} {values!r}" if isinstance(value, list) else f"one value {value!r}"
    return None, f"the training function returned {what}, but directions has {n}"


def _record_failure(trial: optuna.Trial, outcome: Outcome) -> None:
    trial.set_user_attr("failure_reason", outcome.reason)
    if outcome.error_type:
        trial.set_user_attr("failure_type", outcome.error_type)
    if outcome.traceback:
        trial.set_user_attr("failure_traceback", outcome.traceback[-20000:])
    if outcome.exit_code is not None:
        trial.set_user_attr("failure_exit_code", outcome.exit_code)


def _setup_worker_logging() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup_logging("[hparam_joblib]")


def _optimize(study: optuna.Study, objective: _Objective, deadline: float | None = None) -> None:
    """``study.optimize`` until the budget is spent, surfacing our own errors.

    When storage fails inside Optuna's ``tell``, Optuna raises ``AssertionError('Should not
    reach.')`` from its ``finally`` block; the real cause (e.g. StorageBusyError) is in the
    exception's context, so we re-raise that.
    """
    try:
        callbacks = None if deadline is None else [_stop_after(deadline)]  # None: no re-read per trial
        study.optimize(objective, n_trials=None, catch=(), callbacks=callbacks)
    except (BudgetExhausted, _LauncherGone, HparamError):
        raise
    except Exception as err:
        cause: BaseException | None = err
        seen: set[int] = set()
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, (HparamError, BudgetExhausted)):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        raise


def _stop_after(deadline: float) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if time.time() >= deadline:
            study.stop()

    return callback


def _wait_for_slot(storage: StudyStore, study_id: int, budget: int, objective: _Objective) -> bool:
    """Poll until a budget slot is free (False) or the study is finished or we must stop (True)."""
    while True:
        counts = storage.count_states(study_id)  # one read answers both questions
        if n_finished(counts) >= budget or objective.launcher_gone():
            return True
        if n_taken(counts) < budget:
            return False
        reap_dead_owners(storage, study_id)
        time.sleep(_WAIT_FOR_OTHERS_SECONDS)


def _sampler(cfg: SearchConfig, worker_index: int) -> optuna.samplers.BaseSampler:
    seed = worker_seed(cfg.sampler, cfg.seed, worker_index)
    sampler: optuna.samplers.BaseSampler = build(cfg.sampler, seed)
    return sampler


def worker_main(task: WorkerTask) -> WorkerReport:
    """Run trials until the study holds ``n_trials`` finished trials; the loky task body.

    With ``HPARAM_JOBLIB_PROFILE=DIR`` in the environment, each worker writes a cProfile dump
    to ``DIR/worker-<pid>.prof`` (used by the benchmarks to see where a trial's time goes).
    """
    profile_dir = os.environ.get("HPARAM_JOBLIB_PROFILE")
    if not profile_dir:
        return _worker_main(task)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(_worker_main, task)
    finally:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / f"worker-{os.getpid()}.prof"))


def _worker_main(task: WorkerTask) -> WorkerReport:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns Ctrl-C and stops us
    _setup_worker_logging()
    cfg = task.config
    storage = open_storage(
        task.location, budget=cfg.n_trials, run_id=task.run_id, policy=task.policy,
        heartbeat_interval=cfg.heartbeat_interval,
    )
    storage.family = task.launcher_pid
    study = optuna.load_study(
        study_name=cfg.study_name, storage=cast(BaseStorage, storage), sampler=_sampler(cfg, task.worker_index),
        pruner=build(cfg.pruner),
    )
    objective = _Objective(task, storage)
    try:
        while True:
            try:
                _optimize(study, objective, task.deadline)
                if task.deadline is not None and time.time() >= task.deadline:
                    break
            except BudgetExhausted:
                # Every slot is taken; some may be RUNNING elsewhere (a sibling, another launch,
                # or a dead process). Wait, with reads only, until they finish (done) or one is
                # freed (a FAIL), then try again.
                if _wait_for_slot(storage, study._study_id, cfg.n_trials, objective):
                    break
    except _LauncherGone:
        logger.warning("launcher is gone; worker %d stops", os.getpid())
        os._exit(0)
    reap_exiting(wait=True)  # the last trial's process, so that its peak memory is counted
    return WorkerReport(
        pid=os.getpid(),
        trials_run=objective.trials_run,
        lock_retries=storage.lock_retries,
        lock_wait_seconds=storage.lock_wait_seconds,
        op_seconds=tuple(storage.op_seconds),
        peak_trial_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


__all__ = ["WorkerReport", "WorkerTask", "worker_main"]

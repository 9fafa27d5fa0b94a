"""What runs inside one worker process (loky or Dask): a ``study.optimize`` loop on the shared study.

The worker reopens the storage from its path (no schema creation: the launcher did it), builds
its own sampler (with its derived seed) and pruner from the config, takes trials until the
shared budget is spent, runs each training call in a forked child (``_isolation``) whose
``report()`` calls it answers with the pruner's decision, and records failures as PRUNED with
their reason (and pruner decisions as PRUNED with ``pruned_step``).

Launcher liveness: a loky worker is the launcher's child and watches ``getppid()``. A Dask worker's
parent is its nanny, possibly on another machine, so there the launcher keeps a *lease* in the
study's system attrs (``hparam_joblib:launcher:<run id>``), renewed every third of
``heartbeat_interval``; a loop stops when the lease says ``stopped`` (Ctrl-C, an error) or has not
changed for three intervals by the worker's own clock (launcher killed; no clock sync needed).
It goes through the study's storage, so it works for any backend and any number of machines.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import resource
import signal
import socket
import threading
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
from hparam_joblib._failures import ErrorStop
from hparam_joblib._gpus import lease_device, lease_key
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
#: Study system attr prefix of a launcher's lease (followed by the run id).
LAUNCHER_KEY_PREFIX = "hparam_joblib:launcher:"
#: A lease unchanged for this many intervals means the launcher is gone.
LEASE_MISSES = 3


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
    #: None: the worker is the launcher's child (loky) and watches its parent pid. A number:
    #: the launcher renews a lease in the study every third of it (Dask; see the module doc).
    lease_interval: float | None = None
    #: Trials the study held when the launcher started this loop: mixed into the sampler seed
    #: so that a resumed search never replays an earlier run's sequence (``worker_seed``).
    trials_before: int = 0
    #: The launcher's stop-fast rule (``max_trial_errors``), while it is armed: after each trial
    #: the loop checks it and, once it fires, starts no new trial (the launcher stops the search).
    error_stop: ErrorStop | None = None


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
    """The launcher process died (or stopped the search); this worker must stop."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        # Raised through study.optimize, which would log it with a traceback; we say it once.
        optuna.logging.set_verbosity(optuna.logging.ERROR)


def launcher_key(run_id: str) -> str:
    """The study system attr that holds the lease of launch ``run_id``."""
    return LAUNCHER_KEY_PREFIX + run_id


class LauncherLease:
    """The launcher's side: renew the lease (call :meth:`renew` often; it writes when due)."""

    def __init__(self, storage: Any, study_id: int, run_id: str, interval: float) -> None:
        self.storage = storage
        self.study_id = study_id
        self.key = launcher_key(run_id)
        self.period = interval / LEASE_MISSES
        self.beat = 0
        self.last = -math.inf

    def renew(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.period:
            self.beat += 1
            self._write(False)
            self.last = now

    def stop(self) -> None:
        """Tell every loop of this launch to stop now (best effort: they also time out)."""
        try:
            self._write(True)
        except HparamError as err:
            logger.warning("could not tell the workers to stop (%s); they stop when the lease expires", err)

    def _write(self, stopped: bool) -> None:
        self.storage.set_study_system_attr(
            self.study_id, self.key,
            {"beat": self.beat, "host": socket.gethostname(), "pid": os.getpid(), "stopped": stopped},
        )


class LauncherWatch:
    """The worker's side: is the launcher still there? (cheap; reads the lease at most once a second)."""

    def __init__(self, task: WorkerTask, storage: Any, study_id: int = -1) -> None:
        self.task = task
        self.storage = storage
        self.study_id = study_id
        self.why = ""
        self._checked = -math.inf
        self._changed = time.monotonic()
        self._seen: Any = None

    def gone(self) -> bool:
        if self.why:
            return True
        interval = self.task.lease_interval
        if interval is None:
            if os.getppid() != self.task.launcher_pid:
                self.why = "the launcher process is gone"
            return bool(self.why)
        now = time.monotonic()
        if now - self._checked < min(1.0, interval / 2):
            return False
        self._checked = now
        lease = self.storage.get_study_system_attrs(self.study_id).get(launcher_key(self.task.run_id))
        if isinstance(lease, dict) and lease.get("stopped"):
            self.why = "the launcher stopped the search"
        elif lease != self._seen:
            self._seen = lease
            self._changed = now
        elif now - self._changed > LEASE_MISSES * interval:
            self.why = f"the launcher's lease was not renewed for {now - self._changed:.0f} s (launcher gone)"
        return bool(self.why)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _Objective:
    """The function handed to ``study.optimize``: sample, run isolated, translate the outcome."""

    def __init__(self, task: WorkerTask, storage: StudyStore) -> None:
        self.task = task
        self.storage = storage
        self.trials_run = 0
        self.warned_multi_report = False
        self.watch = LauncherWatch(task, storage)  # its study_id is set once the study is loaded
        # Leases are per study (and per host: the lock files are local).
        self.gpu_key = lease_key(task.config.study_name)

    def launcher_gone(self) -> bool:
        return self.watch.gone()

    def run_leased(self, trial: optuna.Trial, *args: Any, **kwargs: Any) -> Outcome:
        """``run_isolated``, on a GPU leased for this trial when ``gpus`` is set.

        The device is leased on this host before the child forks and freed after it ended; the
        child sees it as ``CUDA_VISIBLE_DEVICES`` and the trial records it as user attr ``gpu``.
        """
        gpus = self.task.config.gpus
        if not gpus:
            return run_isolated(*args, **kwargs)
        lease = lease_device(gpus, self.gpu_key, self.launcher_gone, first=self.task.worker_index)
        if lease is None:
            raise self.gone(trial)
        try:
            trial.set_user_attr("gpu", lease.device)
            return run_isolated(*args, env={"CUDA_VISIBLE_DEVICES": lease.device}, **kwargs)
        finally:
            lease.release()

    def gone(self, trial: optuna.Trial) -> _LauncherGone:
        """The exception that ends this loop, after giving ``trial`` (FAIL) its reason."""
        reason = f"not run: {self.watch.why or 'the launcher is gone'}"
        trial.set_user_attr("failure_reason", reason)
        return _LauncherGone(reason)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        if self.launcher_gone():
            raise self.gone(trial)
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

        outcome = self.run_leased(
            trial,
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
            reason = f"stopped while the trial ran: {self.watch.why}; it will be re-run"
            trial.set_user_attr("failure_reason", reason)
            raise _LauncherGone(reason)
        if outcome.kind == "pruned":
            reason = f"pruned by the pruner at step {outcome.step}"
            trial.set_user_attr("failure_reason", reason)
            trial.set_user_attr("pruned_step", outcome.step)
            trial.set_user_attr("failure_kind", "pruner")
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
    trial.set_user_attr("failure_kind", "timeout" if outcome.kind == "timeout" else "error")
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
        # Any callback makes Optuna re-read the finished trial: only the ones needed. On Dask the
        # launcher's lease is checked between trials (no empty trial once it is gone); a loky
        # worker checks its parent pid at the start of each trial instead.
        callbacks = ([_stop_when_gone(objective)] if objective.task.lease_interval is not None else []) + (
            [] if deadline is None else [_stop_after(deadline)]
        ) + ([_pause_when_broken(objective)] if objective.task.error_stop is not None else [])
        study.optimize(objective, n_trials=None, catch=(), callbacks=callbacks or None)
        if objective.launcher_gone():
            raise _LauncherGone(objective.watch.why)
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


def _stop_when_gone(objective: _Objective) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop before the next trial is created once the launcher is gone (no empty FAIL trial)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if objective.launcher_gone():
            study.stop()

    return callback


def _pause_when_broken(objective: _Objective) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Start no new trial once the run's first ``max_trial_errors`` trials all failed by an
    error: wait for the launcher to stop the search (or for a trial elsewhere to complete,
    which turns the rule off)."""
    rule = objective.task.error_stop
    assert rule is not None

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        storage = objective.storage
        if not rule.armed or not rule.check(storage, study._study_id, storage.count_states(study._study_id)):
            return
        while rule.armed and not objective.launcher_gone():
            time.sleep(_WAIT_FOR_OTHERS_SECONDS)
            if storage.count_states(study._study_id).get("COMPLETE", 0) > rule.complete_at_start:
                rule.armed = False
        if objective.launcher_gone():
            study.stop()

    return callback


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


def _sampler(cfg: SearchConfig, worker_index: int, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    seed = worker_seed(cfg.sampler, cfg.seed, worker_index, trials_before)
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


def _allow_trial_processes() -> None:
    """Let this process fork its trial children.

    Dask's nanny starts worker processes as daemons, and ``multiprocessing`` refuses to start a
    child from a daemon ("daemonic processes are not allowed to have children"). The rule exists
    so that orphans are not left behind; ours are joined or killed by ``run_isolated`` and die
    with their parent (``PR_SET_PDEATHSIG``), so lifting the flag is safe.
    """
    current = multiprocessing.current_process()
    if current.daemon:
        current._config["daemon"] = False  # type: ignore[attr-defined]


def _worker_main(task: WorkerTask) -> WorkerReport:
    if threading.current_thread() is threading.main_thread():  # loky; Dask runs tasks in threads
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns Ctrl-C and stops us
    _allow_trial_processes()
    _setup_worker_logging()
    cfg = task.config
    storage = open_storage(
        task.location, budget=cfg.n_trials, run_id=task.run_id, policy=task.policy,
        heartbeat_interval=cfg.heartbeat_interval,
    )
    storage.family = task.launcher_pid
    study = optuna.load_study(
        study_name=cfg.study_name, storage=cast(BaseStorage, storage), sampler=_sampler(cfg, task.worker_index, task.trials_before),
        pruner=build(cfg.pruner),
    )
    objective = _Objective(task, storage)
    objective.watch.study_id = study._study_id
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
        if task.lease_interval is None:  # an orphaned loky worker: nobody will reuse this process
            logger.warning("launcher is gone; worker %d stops", os.getpid())
            os._exit(0)
        # A Dask worker belongs to the cluster: end this loop only, keep the process.
        logger.warning("%s; the search loop in worker %d stops", objective.watch.why, os.getpid())
    reap_exiting(wait=True)  # the last trial's process, so that its peak memory is counted
    return WorkerReport(
        pid=os.getpid(),
        trials_run=objective.trials_run,
        lock_retries=storage.lock_retries,
        lock_wait_seconds=storage.lock_wait_seconds,
        op_seconds=tuple(storage.op_seconds),
        peak_trial_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


__all__ = ["LauncherLease", "WorkerReport", "WorkerTask", "launcher_key", "worker_main"]

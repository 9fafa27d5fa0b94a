"""What runs inside one worker process (loky or Dask): a ``study.optimize`` loop on the shared study.

The worker first starts its warm trial process (``_isolation.TrialProcess``: a fresh interpreter
that loads the user's function once, with the thread caps and the GPU in its environment;
``_startup``), then reopens the storage from its path (no schema creation: the launcher did it),
builds its own sampler (with its derived seed) and pruner from the config, takes trials until
the shared budget is spent, runs each one in the trial process (``_objective``: answering its
``report()`` calls with the pruner's decision), and records failures as PRUNED with their
reason (and pruner decisions as PRUNED with ``pruned_step``). The worker itself never imports
or runs user code.

Between trials it watches the launcher (``_watch``: its parent pid, or on Dask the launcher's
lease in the study) and the stop rules (``_callbacks``). What it gets and sends back is in
``_task``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hparam_joblib._errors import HparamError, UpgradeError
from hparam_joblib._keys import FAILURE_REASON_KEY, OWNER_KEY, RERUN_OF_KEY
from hparam_joblib._logging import set_verbosity
from hparam_joblib._logging import setup as setup_logging
from hparam_joblib.config._algorithms import build, worker_seed
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime._signals import ignore_launcher_signals
from hparam_joblib.runtime._tracking import TrialLogger
from hparam_joblib.runtime.loops._callbacks import WAIT_FOR_OTHERS_SECONDS, ResultRules, optimize_callbacks
from hparam_joblib.runtime.loops._cores import CoreLease
from hparam_joblib.runtime.loops._gpus import DeviceLease, lease_device, lease_key
from hparam_joblib.runtime.loops._jobs import JobSlot
from hparam_joblib.runtime.loops._objective import MemoryRetry, Objective
from hparam_joblib.runtime.loops._startup import start_trial_process, startup_gate
from hparam_joblib.runtime.loops._task import WorkerReport, WorkerTask, workers_log_name
from hparam_joblib.runtime.loops._watch import LauncherGone, LauncherWatch
from hparam_joblib.runtime.trial._isolation import TrialProcess
from hparam_joblib.storage import (
    BudgetExhausted,
    StudyStore,
    causes,
    n_finished,
    n_taken,
    open_storage,
    owner_record,
    reap_dead_owners,
)

logger = logging.getLogger("hparam_joblib")


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
    """Start up, run the loop, report; every resource this loop took is given back."""
    _enter_worker(task)
    cfg = task.config
    jobs = JobSlot(task.run_id, cfg.n_jobs, auto=cfg.n_jobs_auto)
    if not jobs.take(first=task.worker_index):  # memory ran out: this host runs fewer loops now
        return WorkerReport(pid=os.getpid(), trials_run=0, lock_retries=0, memory_limited=True)
    lease: DeviceLease | None = None
    trials: TrialProcess | None = None
    tracker: TrialLogger | None = None
    cores: CoreLease | None = None
    threads = 0
    storage: StudyStore | None = None
    gate = startup_gate(task)
    if not cfg.gpus and gate is None:  # the trial process warms up while the storage and the study load
        trials, threads, cores = start_trial_process(task, None)
    try:
        storage = open_storage(
            task.location, budget=cfg.n_trials, run_id=task.run_id, policy=task.policy,
            heartbeat_interval=cfg.heartbeat_interval,
        )
        storage.family = task.launcher_pid
        study = _load_study(task, storage)
        watch = LauncherWatch(task, storage, study._study_id)
        if gate is not None and n_finished(storage.count_states(study._study_id)) >= cfg.n_trials:
            return _report(storage, 0, None, 0)  # the loops through the gate before it ran them all
        if cfg.gpus:
            # The device is leased on this host for the trial process's whole life (its CUDA
            # context is reused across trials); no two running trial processes share one.
            # Per study and storage: two projects that happen to share a study name never share leases.
            key = lease_key(cfg.study_name, task.location.display)
            lease = lease_device(cfg.gpus, key, watch.gone, first=task.worker_index)
            if lease is None:
                return _report(storage, 0, None, 0)
            trials, threads, cores = start_trial_process(task, lease.device)
        elif trials is None:
            trials, threads, cores = start_trial_process(task, None)
        if task.tracking is not None:
            tracker = TrialLogger(task.tracking)
        objective = Objective(task, storage, trials, watch, None if lease is None else lease.device, tracker, jobs)
        if cfg.n_jobs_auto:
            _admit_before_ask(study, objective)
        trials.wait_ready(watch.gone)  # no trial holds a budget slot while the script loads
        if gate is not None:
            gate.release()
        _loop(task, storage, study, objective, _deadline(task))
        if objective.memory_limited:  # memory ran out: free this process's memory and slot now
            trials.close(grace=0.0)
            jobs.release()
        trials.close()
        return _report(storage, objective.trials_run, trials, threads, objective.memory_limited,
                       objective.memory_waits)
    finally:
        jobs.release()
        if gate is not None:
            gate.release()
        if trials is not None:
            trials.close()
        if cores is not None:
            cores.release()
        if tracker is not None:
            tracker.close()
        if lease is not None:
            lease.release()
        if storage is not None:
            storage.close()  # a reused loky worker keeps no connection of a finished search


def _enter_worker(task: WorkerTask) -> None:
    """Ignore Ctrl-C (the launcher owns it), send our messages where the launcher reads them,
    and take the launcher's environment (loky)."""
    ignore_launcher_signals()  # the launcher owns Ctrl-C and SIGUSR1 and stops us (loky; Dask: threads)
    _setup_worker_logging(task)
    if task.environ is not None and task.environ != os.environ:
        os.environ.clear()
        os.environ.update(task.environ)


def _setup_worker_logging(task: WorkerTask) -> None:
    """Workers log to stderr; a loky worker's stderr (and stdout) goes to its launch's
    ``workers_<run id>.log`` in the log directory, which that launcher shows above its progress
    bar (so the bar stays intact)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if task.log_dir and task.lease_interval is None:
        try:
            Path(task.log_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(os.path.join(task.log_dir, workers_log_name(task.run_id)),
                         os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            pass
        else:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    setup_logging("[hparam_joblib]")


def _load_study(task: WorkerTask, storage: StudyStore) -> optuna.Study:
    """The study, with this worker's own sampler (its derived seed) and pruner."""
    cfg = task.config
    study = optuna.load_study(
        study_name=cfg.study_name, storage=cast(BaseStorage, storage),
        sampler=_sampler(cfg, task.worker_index, task.trials_before, task.launch_number), pruner=build(cfg.pruner),
    )
    _skip_empty_waiting_reads(study, storage, task.run_id)
    _only_budgeted_trials(study, storage)
    return study


def _sampler(
    cfg: SearchConfig, worker_index: int, trials_before: int = 0, launch_number: int = 0,
) -> optuna.samplers.BaseSampler:
    """This worker's sampler, seeded apart from the other loops' and launches' (``worker_seed``)."""
    seed = worker_seed(cfg.sampler, cfg.seed, worker_index, trials_before, launch_number)
    sampler: optuna.samplers.BaseSampler = build(cfg.sampler, seed)
    return sampler


def _skip_empty_waiting_reads(study: optuna.Study, storage: StudyStore, run_id: str) -> None:
    """Optuna's ``ask()`` first looks for an enqueued (WAITING) trial by reading every unfinished
    and new trial of the study (through its cache: ~6 queries), on every trial; most studies
    never enqueue one. An index lookup answers "none" first (a study with ``enqueue:`` entries
    still takes them in order: the lookup then finds one and Optuna's own read runs)."""
    pop = study._pop_waiting_trial_id
    study_id = study._study_id

    def pop_if_any() -> int | None:
        popped = pop() if storage.has_waiting(study_id) else None
        if popped is not None:  # taken over, not created: checked_ask lets it through
            storage.popped_trial_ids.add(popped)
            # Owned at once (the objective would write it only after sampling): an ownerless
            # RUNNING trial looks abandoned to the reapers (``storage/_owners``).
            storage.set_trial_system_attr(popped, OWNER_KEY, owner_record(run_id))
            storage.created_trial_ids.add(popped)
        return popped

    study._pop_waiting_trial_id = pop_if_any  # type: ignore[method-assign]


def _only_budgeted_trials(study: optuna.Study, storage: StudyStore) -> None:
    """The worker's half of the call-path guard (``storage/_guard``): every trial ``ask()``
    hands this loop must come from our budgeted creation or from the queue (``pop_if_any``).
    Any other was created by a path that skips the budget (an Optuna release that moved the
    call): it is failed with the reason and the search stops, before the trial runs, rather
    than run past n_trials. (Raised from ``ask()``, so Optuna logs no traceback for it.)"""
    ask = study.ask

    def checked_ask(*args: Any, **kwargs: Any) -> optuna.Trial:
        trial = ask(*args, **kwargs)
        trial_id = trial._trial_id
        if trial_id not in storage.created_trial_ids and trial_id not in storage.popped_trial_ids:
            from hparam_joblib._tested import describe

            reason = (f"optuna {optuna.__version__} created trial {trial.number} outside hparam_joblib's budgeted "
                      f"creation, so the exact n_trials budget cannot hold; the search stops. hparam_joblib was "
                      f"tested with {describe('optuna')}: install a tested release")
            storage.set_trial_user_attr(trial_id, FAILURE_REASON_KEY, reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            raise UpgradeError(reason)
        return trial

    study.ask = checked_ask  # type: ignore[method-assign]


def _admit_before_ask(study: optuna.Study, objective: Objective) -> None:
    """``n_jobs: auto``: a trial is created only once memory holds it (``Objective.admit``), so
    no trial sits RUNNING in the study, its clock going, while it waits for memory."""
    ask = study.ask

    def admitted_ask(*args: Any, **kwargs: Any) -> optuna.Trial:
        objective.admit()
        try:
            return ask(*args, **kwargs)
        except BaseException:  # no trial (the budget is spent, the launcher gone): give the room back
            objective.unadmit()
            raise

    study.ask = admitted_ask  # type: ignore[method-assign]


def _requeue(study: optuna.Study, retry: MemoryRetry) -> None:
    """Queue the configuration of a trial killed for memory beside others to run again (first,
    like an ``enqueue`` entry; the new trial's user attr ``rerun_of`` names the killed one). The
    killed trial is FAIL, so its budget slot is free; when another loop took that slot first (the
    budget's last trials), the configuration is not run again and a new one is not either."""
    if not retry.params:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.enqueue_trial(retry.params, user_attrs={RERUN_OF_KEY: retry.number})
    except BudgetExhausted:
        logger.info("trial %d's configuration is not run again: every trial of the budget is taken", retry.number)


def _deadline(task: WorkerTask) -> float | None:
    """``time.time()`` after which this loop starts no trial: the stop rule's, or the end of its
    ``run_seconds`` counted from now (the trial process is ready)."""
    deadline = task.deadline
    if task.run_seconds is not None:
        own = time.time() + task.run_seconds
        deadline = own if deadline is None else min(deadline, own)
    return deadline


def _loop(task: WorkerTask, storage: StudyStore, study: optuna.Study, objective: Objective,
          deadline: float | None) -> None:
    """Run trials until the budget is spent, the deadline passed, a stop rule fired or the
    launcher is gone."""
    cfg = task.config
    set_verbosity(cfg.verbosity)
    try:
        while not objective.slot_closed():
            try:
                if _optimize(study, objective, deadline):  # deadline passed / a stop rule fired
                    break
            except MemoryRetry as retry:  # the trial is FAIL; its configuration runs again
                _requeue(study, retry)
                if not objective.slot_closed():
                    objective.wait_for_room()
                continue
            except BudgetExhausted:
                # Every slot is taken; some may be RUNNING elsewhere (a sibling, another launch,
                # or a dead process). Wait, with reads only, until they finish (done) or one is
                # freed (a FAIL), then try again.
                if _wait_for_slot(storage, study._study_id, cfg.n_trials, objective):
                    break
    except LauncherGone:
        if task.lease_interval is None:  # an orphaned loky worker: nobody will reuse this process
            logger.warning("launcher is gone; worker %d stops", os.getpid())
            objective.trials.close(grace=1.0)
            os._exit(0)
        # A Dask worker belongs to the cluster: end this loop only, keep the process.
        logger.warning("%s; the search loop in worker %d stops", objective.watch.why, os.getpid())


def _optimize(study: optuna.Study, objective: Objective, deadline: float | None = None) -> bool:
    """``study.optimize`` until the budget is spent, surfacing our own errors.

    When storage fails inside Optuna's ``tell``, Optuna raises ``AssertionError('Should not
    reach.')`` from its ``finally`` block; the real cause (e.g. StorageBusyError) is in the
    exception's context, so we re-raise that.

    Returns:
        True when this run must start no more trials: ``deadline`` passed or a stop rule fired
        (``_stop``); no trial is started then.
    """
    rules = ResultRules(objective) if ResultRules.wanted(objective) else None
    if _past(deadline) or (rules is not None and rules.recorded(study)):
        return True
    try:
        callbacks = optimize_callbacks(objective, deadline, rules)
        study.optimize(objective, n_trials=None, catch=(), callbacks=callbacks or None)
        if objective.launcher_gone():
            raise LauncherGone(objective.watch.why)
    except (BudgetExhausted, LauncherGone, HparamError, MemoryRetry):
        raise
    except Exception as err:
        for cause in causes(err):
            if isinstance(cause, (HparamError, BudgetExhausted)):
                raise cause from None
        raise
    return _past(deadline) or (rules is not None and rules.stopped)


def _past(deadline: float | None) -> bool:
    """Has ``deadline`` (``time.time()``, or None: none) passed?"""
    return deadline is not None and time.time() >= deadline


def _wait_for_slot(storage: StudyStore, study_id: int, budget: int, objective: Objective) -> bool:
    """Poll until a budget slot is free (False) or the study is finished or we must stop (True)."""
    while True:
        counts = storage.count_states(study_id)  # one read answers both questions
        if n_finished(counts) >= budget or objective.launcher_gone():
            return True
        if n_taken(counts) < budget:
            return False
        reap_dead_owners(storage, study_id)
        time.sleep(WAIT_FOR_OTHERS_SECONDS)


def _report(storage: StudyStore, trials_run: int, trials: TrialProcess | None, threads: int,
            memory_limited: bool = False, memory_waits: int = 0) -> WorkerReport:
    """What this worker sends back to the launcher."""
    return WorkerReport(
        pid=os.getpid(),
        trials_run=trials_run,
        lock_retries=storage.lock_retries,
        op_seconds=tuple(storage.op_seconds),
        peak_trial_mib=0.0 if trials is None else trials.peak_mib,
        trial_processes=0 if trials is None else trials.started,
        threads=threads,
        threads_seen=0 if trials is None else trials.threads_seen,
        cores=0 if trials is None else trials.cores_seen,
        memory_limited=memory_limited,
        memory_waits=memory_waits,
    )

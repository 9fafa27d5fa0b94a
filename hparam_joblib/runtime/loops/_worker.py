"""What runs inside one worker process (loky or Dask): a ``study.optimize`` loop on the shared study.

The worker first starts its warm trial process (``_isolation.TrialProcess``: a fresh interpreter
that loads the user's function once, with the thread caps and the GPU in its environment), then
reopens the storage from its path (no schema creation: the launcher did it), builds its own
sampler (with its derived seed) and pruner from the config, takes trials until the shared
budget is spent, runs each one in the trial process (answering its ``report()`` calls with the
pruner's decision), and records failures as PRUNED with their reason (and pruner decisions as
PRUNED with ``pruned_step``). The worker itself never imports or runs user code.

Launcher liveness: a loky worker is the launcher's child and watches ``getppid()``, or a fork of
the preloaded server and watches the launcher's multiprocessing sentinel (``_forkserver``). A Dask worker's
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
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import optuna
from optuna.storages import BaseStorage

from hparam_joblib._errors import HparamError
from hparam_joblib._keys import (
    CONFIG_KEY,
    ERROR,
    FAILURE_EXIT_CODE_KEY,
    FAILURE_KIND_KEY,
    FAILURE_REASON_KEY,
    FAILURE_TRACEBACK_KEY,
    FAILURE_TYPE_KEY,
    GPU_KEY,
    LAUNCHER_KEY_PREFIX,
    LOG_FILE_KEY,
    OWNER_KEY,
    PEAK_RSS_MIB_KEY,
    PRUNED_STEP_KEY,
    PRUNER,
    TIMEOUT,
    TRIAL_PID_KEY,
)
from hparam_joblib._logging import set_verbosity
from hparam_joblib._logging import setup as setup_logging
from hparam_joblib.config._algorithms import build, worker_seed
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.config._space import build_config, suggest_all
from hparam_joblib.runtime._failures import ErrorStop
from hparam_joblib.runtime._stop import read_stop, result_rule_met, stop_key, stop_record
from hparam_joblib.runtime._tracking import TrackingTarget, TrialLogger
from hparam_joblib.runtime.loops import _forkserver
from hparam_joblib.runtime.loops._gpus import DeviceLease, lease_device, lease_key
from hparam_joblib.runtime.loops._slots import Slot, slot_directory, take_slot
from hparam_joblib.runtime.trial._funcref import FunctionRef
from hparam_joblib.runtime.trial._isolation import Outcome, TrialProcess, thread_env
from hparam_joblib.storage import (
    BudgetExhausted,
    RetryPolicy,
    StorageLocation,
    StudyStore,
    n_finished,
    n_taken,
    open_storage,
    owner_record,
    reap_dead_owners,
)

logger = logging.getLogger("hparam_joblib")

_WAIT_FOR_OTHERS_SECONDS = 0.25
#: How often a loop waiting at the start-up gate looks for a free slot.
_GATE_POLL_SECONDS = 0.02
#: A lease unchanged for this many intervals means the launcher is gone.
LEASE_MISSES = 3


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker needs; small and picklable (plain data: no user object)."""

    #: Where the training function lives (loaded by the trial process only).
    function: FunctionRef
    config: SearchConfig
    #: Where the study lives (a server URL with its password: never printed; repr hides it).
    location: StorageLocation
    run_id: str
    launcher_pid: int
    worker_index: int
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: ``time.time()`` after which no new trial starts (the ``timeout`` stop rule), or None.
    deadline: float | None = None
    #: Seconds this loop starts trials for, from when its trial process is ready (``--tune-n-jobs``
    #: rungs: the start-up is not part of the measured time), or None.
    run_seconds: float | None = None
    #: None: the worker is the launcher's child (loky) and watches its parent pid. A number:
    #: the launcher renews a lease in the study every third of it (Dask; see the module doc).
    lease_interval: float | None = None
    #: Trials the study held when the launcher started this loop: mixed into the sampler seed
    #: so that a resumed search never replays an earlier run's sequence (``worker_seed``).
    trials_before: int = 0
    #: The launcher's stop-fast rule (``max_trial_errors``), while it is armed: after each trial
    #: the loop checks it and, once it fires, starts no new trial (the launcher stops the search).
    error_stop: ErrorStop | None = None
    #: Where the trial logs go (``<save_db_directory>/<study>/``, absolute), or None: no logs.
    log_dir: str | None = None
    #: Where this worker writes its trials' MLflow runs (``tracking.mlflow``), or None.
    tracking: TrackingTarget | None = None
    #: The launcher's environment when it started this loop (loky), or None (Dask: each machine
    #: keeps its own). A loky worker may be older than the launcher's latest change to it: a
    #: fork of the preloaded server, or a reused worker, in a notebook kernel that set a variable
    #: after the previous search. Its trial process gets this one.
    environ: dict[str, str] | None = field(default=None, repr=False)  # may hold secrets: never printed


#: The file in the log directory where loky workers' own messages go (the launcher shows them).
WORKERS_LOG = "workers.log"


def trial_log_name(number: int) -> str:
    """``trial_00042.log``."""
    return f"trial_{number:05d}.log"


@dataclass(frozen=True)
class WorkerReport:
    """What a worker sends back when the budget is spent."""

    pid: int
    trials_run: int
    lock_retries: int
    op_seconds: tuple[float, ...] = ()
    #: Peak resident memory of this worker's trial processes, in MiB.
    peak_trial_mib: float = 0.0
    #: Trial processes this worker started (1 unless one died, timed out or was recycled).
    trial_processes: int = 0
    #: Threads each trial process was capped at (0: not capped: the user exported all the variables).
    threads: int = 0


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

    def stop(self, reason: str = "") -> None:
        """Tell every loop of this launch to stop now (best effort: they also time out).

        ``reason`` is what a loop records on a trial it sees stopped: the same text the launcher
        writes on the trials it fails itself, whichever of the two gets there first.
        """
        try:
            self._write(True, reason)
        except HparamError as err:
            logger.warning("could not tell the workers to stop (%s); they stop when the lease expires", err)

    def _write(self, stopped: bool, reason: str = "") -> None:
        record: dict[str, Any] = {"beat": self.beat, "host": socket.gethostname(), "pid": os.getpid(),
                                  "stopped": stopped}
        if reason:
            record["reason"] = reason
        self.storage.set_study_system_attr(self.study_id, self.key, record)


def _parent_gone(task: WorkerTask) -> bool:
    """A loky worker's check: is the launcher gone? (It is the launcher's child, or a fork of
    the preloaded server.)"""
    return _forkserver.launcher_gone() if _forkserver.FORKED_FROM else os.getppid() != task.launcher_pid


def _startup_gate(task: WorkerTask) -> Slot | None:
    """With more loky loops than cores, at most ``cores`` of them start up at once (trial process,
    script import, storage) on this host, so the first ones run trials in a fraction of a second
    instead of all finishing their start-up together, seconds later. None: no gate needed (or
    the lock files cannot be made: then every loop starts at once, as without the gate).

    Exits the process when the launcher goes away while this loop waits (nobody would reuse it).
    """
    from loky import cpu_count

    cores = cpu_count()
    if task.lease_interval is not None or task.config.n_jobs <= cores:
        return None  # Dask loops are spread over hosts and threads by the cluster
    try:
        gate = take_slot(cores, slot_directory("start-gate"), f"uid{os.getuid()}", lambda: _parent_gone(task),
                         first=task.worker_index, poll=_GATE_POLL_SECONDS)
    except OSError as err:
        logger.debug("no start-up gate (%s); this loop starts at once", err)
        return None
    if gate is None:
        logger.warning("launcher is gone; worker %d stops", os.getpid())
        os._exit(0)
    return gate


class LauncherWatch:
    """The worker's side: is the launcher still there? (cheap; reads the lease at most once a second)."""

    def __init__(self, task: WorkerTask, storage: Any, study_id: int = -1) -> None:
        self.task = task
        self.storage = storage
        self.study_id = study_id
        self.why = ""
        #: The launcher's reason for stopping this launch (from its lease), once it stopped it.
        self.stop_reason = ""
        self._checked = -math.inf
        self._changed = time.monotonic()
        self._seen: Any = None

    def gone(self) -> bool:
        if self.why:
            return True
        interval = self.task.lease_interval
        if interval is None:
            if _parent_gone(self.task):
                self.why = "the launcher process is gone"
            return bool(self.why)
        now = time.monotonic()
        if now - self._checked < min(1.0, interval / 2):
            return False
        self._checked = now
        lease = self._lease()
        if self._stopped(lease):
            return True
        if lease != self._seen:
            self._seen = lease
            self._changed = now
        elif now - self._changed > LEASE_MISSES * interval:
            self.why = f"the launcher's lease was not renewed for {now - self._changed:.0f} s (launcher gone)"
        return bool(self.why)

    def stopped_now(self) -> bool:
        """Has the launcher stopped this launch? Read from the storage now (no throttle).

        Asked when a trial's process was killed: the launcher writes the stop before it kills the
        workers, and loky kills a worker's children first, so a worker that sees its trial process
        die in a shutdown must not record that as the trial's own failure.
        """
        try:
            lease = self._lease()
        except HparamError:
            return False
        return self._stopped(lease)

    def _lease(self) -> Any:
        """The launcher's lease record for this launch, read from the storage."""
        return self.storage.get_study_system_attrs(self.study_id).get(launcher_key(self.task.run_id))

    def _stopped(self, lease: Any) -> bool:
        """Does ``lease`` say the launcher stopped this launch? (Then ``why``/``stop_reason`` are set.)"""
        if not (isinstance(lease, dict) and lease.get("stopped")):
            return False
        self.why = self.why or "the launcher stopped the search"
        self.stop_reason = str(lease.get("reason") or "")
        return True


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class _Objective:
    """The function handed to ``study.optimize``: sample, run isolated, translate the outcome."""

    def __init__(self, task: WorkerTask, storage: StudyStore, trials: TrialProcess,
                 device: str | None = None) -> None:
        self.task = task
        self.storage = storage
        self.trials = trials
        #: The GPU this worker's trial process is pinned to (for its whole life), or None.
        self.device = device
        self.trials_run = 0
        self.warned_multi_report = False
        self.watch = LauncherWatch(task, storage)  # its study_id is set once the study is loaded
        #: Writes each finished trial's MLflow run in the background (``tracking.mlflow``), or None.
        self.tracker: TrialLogger | None = None

    def launcher_gone(self) -> bool:
        return self.watch.gone()

    def gone(self, trial: optuna.Trial) -> _LauncherGone:
        """The exception that ends this loop, after giving ``trial`` (FAIL) its reason."""
        reason = f"not run: {self.watch.why or 'the launcher is gone'}"
        trial.set_user_attr(FAILURE_REASON_KEY, reason)
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
        trial.set_user_attr(CONFIG_KEY, _jsonable(config))
        log_path = None
        if self.task.log_dir:
            log_path = os.path.join(self.task.log_dir, trial_log_name(trial.number))
            trial.set_user_attr(LOG_FILE_KEY, log_path)
        if self.device is not None:
            trial.set_user_attr(GPU_KEY, self.device)
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

        outcome = self.trials.run(
            config,
            trial_number=trial.number,
            log_path=log_path,
            timeout=cfg.trial_timeout,
            should_stop=self.launcher_gone,
            on_report=on_report,
        )
        if outcome.peak_mib is not None:
            trial.set_user_attr(PEAK_RSS_MIB_KEY, round(outcome.peak_mib, 1))
        if outcome.pid is not None:
            trial.set_user_attr(TRIAL_PID_KEY, outcome.pid)
        if outcome.kind == "value" and outcome.value is not None:
            values, why = _fit_directions(outcome.value, len(cfg.directions))
            if values is not None:
                return values
            outcome = Outcome("error", reason=why, error_type="InvalidReturn")
        if outcome.kind == "died" and self.watch.stopped_now():  # killed by the shutdown
            outcome = Outcome("stopped", reason=outcome.reason, pid=outcome.pid)
        if outcome.kind == "stopped":
            reason = self.watch.stop_reason or f"stopped while the trial ran: {self.watch.why}; it will be re-run"
            trial.set_user_attr(FAILURE_REASON_KEY, reason)
            raise _LauncherGone(reason)
        if outcome.kind == "pruned":
            reason = f"pruned by the pruner at step {outcome.step}"
            trial.set_user_attr(FAILURE_REASON_KEY, reason)
            trial.set_user_attr(PRUNED_STEP_KEY, outcome.step)
            trial.set_user_attr(FAILURE_KIND_KEY, PRUNER)
            logger.debug("Trial %d %s", trial.number, reason)  # counted in the bar; one line each at --verbose
            raise optuna.TrialPruned(reason)
        _record_failure(trial, outcome)
        last = outcome.output_tail.splitlines()[-1:] if outcome.output_tail else []
        logger.warning("Trial %d pruned: %s%s", trial.number, outcome.reason,
                       f" | last output: {last[0][:200]}" if last else "")
        raise optuna.TrialPruned(outcome.reason)


def _fit_directions(value: float | list[float], n: int) -> tuple[float | list[float] | None, str]:
    """The value Optuna expects for ``n`` objectives, or None and why the return does not fit."""
    values = value if isinstance(value, list) else [value]
    if len(values) == n:
        return (values[0] if n == 1 else values), ""
    what = f"{len(values)} value{'' if len(values) == 1 else 's'} {values!r}" if isinstance(value, list) else f"one value {value!r}"
    return None, f"the training function returned {what}, but directions has {n}"


def _record_failure(trial: optuna.Trial, outcome: Outcome) -> None:
    # The first line is the reason (what `hparam-joblib status` groups by); the trial's last
    # output lines follow, so that the dashboard shows why without opening the log.
    reason = outcome.reason
    if outcome.output_tail:
        reason += "\nlast output lines:\n" + outcome.output_tail
    trial.set_user_attr(FAILURE_REASON_KEY, reason)
    trial.set_user_attr(FAILURE_KIND_KEY, TIMEOUT if outcome.kind == "timeout" else ERROR)
    if outcome.error_type:
        trial.set_user_attr(FAILURE_TYPE_KEY, outcome.error_type)
    if outcome.traceback:
        trial.set_user_attr(FAILURE_TRACEBACK_KEY, outcome.traceback[-20000:])
    if outcome.exit_code is not None:
        trial.set_user_attr(FAILURE_EXIT_CODE_KEY, outcome.exit_code)


def _setup_worker_logging(task: WorkerTask) -> None:
    """Workers log to stderr; a loky worker's stderr (and stdout) goes to ``workers.log`` in the
    log directory, which the launcher shows above its progress bar (so the bar stays intact)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if task.log_dir and task.lease_interval is None:
        try:
            Path(task.log_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(os.path.join(task.log_dir, WORKERS_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            pass
        else:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    setup_logging("[hparam_joblib]")


def trial_threads(cfg: SearchConfig, loops_here: int, cores: int) -> int:
    """Threads per trial: ``threads_per_trial``, else the cores // the trials running at once here."""
    if cfg.threads_per_trial is not None:
        return cfg.threads_per_trial
    return max(1, cores // max(1, loops_here))


def _loops_on_this_host(task: WorkerTask) -> int:
    """How many loops of this search may run on this machine at once (for the thread cap)."""
    n_jobs = task.config.n_jobs
    if task.lease_interval is None:  # loky: all on this machine
        return n_jobs
    try:  # Dask: the worker threads of this host, at most n_jobs
        from distributed import get_worker

        worker = get_worker()
        host = worker.address.rsplit(":", 1)[0]
        info = worker.client.scheduler_info(n_workers=-1)
        here = sum(w.get("nthreads", 1) for addr, w in info.get("workers", {}).items()
                   if addr.rsplit(":", 1)[0] == host)
        return max(1, min(n_jobs, here))
    except Exception:  # noqa: BLE001 - best effort; fall back to n_jobs
        return n_jobs


def _start_trial_process(task: WorkerTask, device: str | None) -> tuple[TrialProcess, int]:
    """The worker's warm trial process, started now (it loads the user's function meanwhile)."""
    from loky import cpu_count

    threads = trial_threads(task.config, _loops_on_this_host(task), cpu_count())
    env = thread_env(threads, os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    process_log = None
    if task.log_dir:
        try:  # on another machine of a Dask cluster the directory may not be creatable
            Path(task.log_dir).mkdir(parents=True, exist_ok=True)
            process_log = os.path.join(task.log_dir, f"process_w{task.worker_index:03d}.log")
        except OSError as err:
            logger.warning("no trial logs on this machine: cannot create %s (%s)", task.log_dir, err.strerror)
            task = replace(task, log_dir=None)
    trials = TrialProcess(task.function, env, process_log, task.config.trials_per_process)
    trials.start()
    capped = any(var in env for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
    return trials, threads if capped else 0


def _optimize(study: optuna.Study, objective: _Objective, deadline: float | None = None) -> bool:
    """``study.optimize`` until the budget is spent, surfacing our own errors.

    When storage fails inside Optuna's ``tell``, Optuna raises ``AssertionError('Should not
    reach.')`` from its ``finally`` block; the real cause (e.g. StorageBusyError) is in the
    exception's context, so we re-raise that.

    Returns:
        True when this run must start no more trials: ``deadline`` passed or a stop rule fired
        (``_stop``); no trial is started then.
    """
    rules = _ResultRules(objective) if _has_result_rules(objective) else None
    if _past(deadline) or (rules is not None and rules.recorded(study)):
        return True
    try:
        # Any callback makes Optuna re-read the finished trial: only the ones needed. On Dask the
        # launcher's lease is checked between trials (no empty trial once it is gone); a loky
        # worker checks its parent pid at the start of each trial instead.
        callbacks = ([_stop_when_gone(objective)] if objective.task.lease_interval is not None else []) + (
            [] if deadline is None else [_stop_after(deadline)]
        ) + ([] if rules is None else [rules]) + ([] if objective.tracker is None else [_track(objective.tracker)])
        callbacks += [_pause_when_broken(objective)] if objective.task.error_stop is not None else []
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
    return _past(deadline) or (rules is not None and rules.stopped)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def _has_result_rules(objective: _Objective) -> bool:
    rules = objective.task.config.stop
    return rules.no_improvement is not None or rules.at_value is not None


class _ResultRules:
    """The callback of ``stop_no_improvement`` / ``stop_at_value`` (see ``_stop``): after each
    trial, stop when another loop recorded a stop for this run, or when a rule is met now
    (then record it, for the other loops and the launcher)."""

    def __init__(self, objective: _Objective) -> None:
        self.objective = objective
        self.stopped = False

    def recorded(self, study: optuna.Study) -> bool:
        attrs = self.objective.storage.get_study_system_attrs(study._study_id)
        self.stopped = self.stopped or read_stop(attrs, self.objective.task.run_id) is not None
        return self.stopped

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        task = self.objective.task
        if not self.recorded(study):
            why = result_rule_met(
                study.get_trials(deepcopy=False), task.run_id, task.config.direction == "maximize", task.config.stop
            )
            if why is not None:
                self.objective.storage.set_study_system_attr(study._study_id, stop_key(task.run_id), stop_record(why))
                self.stopped = True
        if self.stopped:
            study.stop()


def _stop_when_gone(objective: _Objective) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop before the next trial is created once the launcher is gone (no empty FAIL trial)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if objective.launcher_gone():
            study.stop()

    return callback


def _track(tracker: TrialLogger) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Hand each finished trial (its final state, values, reports, attrs) to the MLflow writer."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        tracker.submit(trial)

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


def _worker_main(task: WorkerTask) -> WorkerReport:
    if threading.current_thread() is threading.main_thread():  # loky; Dask runs tasks in threads
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher owns Ctrl-C and stops us
    _setup_worker_logging(task)
    if task.environ is not None and task.environ != os.environ:
        os.environ.clear()
        os.environ.update(task.environ)
    cfg = task.config
    lease: DeviceLease | None = None
    trials: TrialProcess | None = None
    tracker: TrialLogger | None = None
    threads = 0
    storage: StudyStore | None = None
    gate = _startup_gate(task)
    if not cfg.gpus and gate is None:  # the trial process warms up while the storage and the study load
        trials, threads = _start_trial_process(task, None)
    try:
        storage = open_storage(
            task.location, budget=cfg.n_trials, run_id=task.run_id, policy=task.policy,
            heartbeat_interval=cfg.heartbeat_interval,
        )
        storage.family = task.launcher_pid
        study = optuna.load_study(
            study_name=cfg.study_name, storage=cast(BaseStorage, storage),
            sampler=_sampler(cfg, task.worker_index, task.trials_before), pruner=build(cfg.pruner),
        )
        _skip_empty_waiting_reads(study, storage)
        watch = LauncherWatch(task, storage, study._study_id)
        if gate is not None and n_finished(storage.count_states(study._study_id)) >= cfg.n_trials:
            return _report(task, storage, 0, None, 0)  # the loops through the gate before it ran them all
        if cfg.gpus:
            # The device is leased on this host for the trial process's whole life (its CUDA
            # context is reused across trials); no two running trial processes share one.
            lease = lease_device(cfg.gpus, lease_key(cfg.study_name), watch.gone, first=task.worker_index)
            if lease is None:
                return _report(task, storage, 0, None, 0)
            trials, threads = _start_trial_process(task, lease.device)
        elif trials is None:
            trials, threads = _start_trial_process(task, None)
        objective = _Objective(task, storage, trials, device=None if lease is None else lease.device)
        objective.watch = watch
        if task.tracking is not None:
            tracker = objective.tracker = TrialLogger(task.tracking)
        trials.wait_ready(watch.gone)  # no trial holds a budget slot while the script loads
        if gate is not None:
            gate.release()
        deadline = task.deadline
        if task.run_seconds is not None:
            own = time.time() + task.run_seconds
            deadline = own if deadline is None else min(deadline, own)
        _loop(task, storage, study, objective, deadline)
        trials.close()
        return _report(task, storage, objective.trials_run, trials, threads)
    finally:
        if gate is not None:
            gate.release()
        if trials is not None:
            trials.close()
        if tracker is not None:
            tracker.close()
        if lease is not None:
            lease.release()
        if storage is not None:
            storage.close()  # a reused loky worker keeps no connection of a finished search


def _skip_empty_waiting_reads(study: optuna.Study, storage: StudyStore) -> None:
    """Optuna's ``ask()`` first looks for an enqueued (WAITING) trial by reading every unfinished
    and new trial of the study (through its cache: ~6 queries), on every trial; most studies
    never enqueue one. An index lookup answers "none" first (a study with ``enqueue:`` entries
    still takes them in order: the lookup then finds one and Optuna's own read runs)."""
    pop = study._pop_waiting_trial_id
    study_id = study._study_id

    def pop_if_any() -> int | None:
        return pop() if storage.has_waiting(study_id) else None

    study._pop_waiting_trial_id = pop_if_any  # type: ignore[method-assign]


def _loop(task: WorkerTask, storage: StudyStore, study: optuna.Study, objective: _Objective,
          deadline: float | None) -> None:
    cfg = task.config
    set_verbosity(cfg.verbosity)
    try:
        while True:
            try:
                if _optimize(study, objective, deadline):  # deadline passed / a stop rule fired
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
            objective.trials.close(grace=1.0)
            os._exit(0)
        # A Dask worker belongs to the cluster: end this loop only, keep the process.
        logger.warning("%s; the search loop in worker %d stops", objective.watch.why, os.getpid())


def _report(task: WorkerTask, storage: StudyStore, trials_run: int, trials: TrialProcess | None,
            threads: int) -> WorkerReport:
    return WorkerReport(
        pid=os.getpid(),
        trials_run=trials_run,
        lock_retries=storage.lock_retries,
        op_seconds=tuple(storage.op_seconds),
        peak_trial_mib=0.0 if trials is None else trials.peak_mib,
        trial_processes=0 if trials is None else trials.started,
        threads=threads,
    )


__all__ = ["LauncherLease", "WorkerReport", "WorkerTask", "launcher_key", "worker_main"]

"""The function a worker hands to ``study.optimize``: sample, run in the trial process, translate
the outcome into a value, a PRUNED trial with its reason, or the end of the loop."""

from __future__ import annotations

import logging
import os
from typing import Any

import optuna

from hparam_joblib._keys import (
    CONFIG_KEY,
    CPU_SECONDS_KEY,
    ERROR,
    FAILURE_EXIT_CODE_KEY,
    FAILURE_KIND_KEY,
    FAILURE_REASON_KEY,
    FAILURE_TRACEBACK_KEY,
    FAILURE_TYPE_KEY,
    GPU_KEY,
    LOG_FILE_KEY,
    OUT_OF_MEMORY,
    OUT_OF_MEMORY_BESIDE,
    OWNER_KEY,
    PEAK_GPU_MIB_KEY,
    PEAK_RSS_MIB_KEY,
    PRUNED_STEP_KEY,
    PRUNER,
    TIMEOUT,
    TRIAL_PID_KEY,
)
from hparam_joblib.config._space import build_config, suggest_all
from hparam_joblib.runtime._json import jsonable
from hparam_joblib.runtime._tracking import TrialLogger
from hparam_joblib.runtime.loops._jobs import JobSlot, lower_open_slots
from hparam_joblib.runtime.loops._task import WorkerTask, trial_log_name
from hparam_joblib.runtime.loops._watch import LauncherGone, LauncherWatch
from hparam_joblib.runtime.trial._isolation import Outcome, TrialProcess
from hparam_joblib.storage import StudyStore, owner_record

logger = logging.getLogger("hparam_joblib")


class MemoryRetry(Exception):
    """A trial was killed for memory while others ran beside it: it is FAIL (re-run, not counted)
    and the loop goes on, unless its job slot closed."""

    def __init__(self, why: str, number: int = -1, params: dict[str, Any] | None = None) -> None:
        super().__init__(why)
        #: The killed trial's number and configuration (queued to run again, ``_worker._requeue``).
        self.number = number
        self.params = dict(params or {})
        # Raised through study.optimize, which would log it with a traceback; we say it once.
        optuna.logging.set_verbosity(optuna.logging.ERROR)


class Objective:
    """The function handed to ``study.optimize``: sample, run isolated, translate the outcome."""

    def __init__(self, task: WorkerTask, storage: StudyStore, trials: TrialProcess, watch: LauncherWatch,
                 device: str | None = None, tracker: TrialLogger | None = None, jobs: JobSlot | None = None) -> None:
        self.task = task
        self.storage = storage
        self.trials = trials
        self.watch = watch
        #: The GPU this worker's trial process is pinned to (for its whole life), or None.
        self.device = device
        #: Writes each finished trial's MLflow run in the background (``tracking.mlflow``), or None.
        self.tracker = tracker
        #: This loop's job slot (how many trials run at once on this host; ``_jobs``), or None.
        self.jobs = jobs
        #: Trials of this launch running on this host as the current trial started.
        self.running_at_start = 1
        #: This loop ended because memory ran out and its slot closed.
        self.memory_limited = False
        #: Trials this loop started only after waiting for memory (``n_jobs: auto``).
        self.memory_waits = 0
        #: ``n_jobs: auto``: memory was found for the next trial (``admit``), not yet used.
        self.admitted = False
        self.trials_run = 0
        self.warned_multi_report = False

    def launcher_gone(self) -> bool:
        """Is the launcher gone (or did it stop the search)?"""
        return self.watch.gone()

    def slot_closed(self) -> bool:
        """Must this loop start no more trials (memory ran out, its job slot closed)?"""
        if self.jobs is not None and self.jobs.closed():
            self.memory_limited = True
        return self.memory_limited

    def wait_for_room(self) -> None:
        """Before the next trial, after memory ran out: wait while a closed loop still runs its last."""
        if self.jobs is not None:
            self.jobs.wait_for_room(self.launcher_gone)

    def admit(self) -> None:
        """``n_jobs: auto``, before a trial is created: wait until memory holds one more trial
        (``JobSlot.admit``). Raises LauncherGone when the search stopped meanwhile."""
        if self.jobs is None or not self.task.config.n_jobs_auto or self.admitted:
            return
        waited = self.jobs.admit(self.trials.pid if self.trials.alive() else None, self.launcher_gone)
        if self.launcher_gone():
            self.unadmit()
            raise LauncherGone(self.watch.why or "the launcher is gone")
        self.admitted = True
        if waited > 0.5:
            self.memory_waits += 1

    def unadmit(self) -> None:
        """The admitted trial will not run (no trial was created): give its room back."""
        if self.jobs is not None and self.task.config.n_jobs_auto:
            self.jobs.finished(None, ran=False)
        self.admitted = False

    def gone(self, trial: optuna.Trial) -> LauncherGone:
        """The exception that ends this loop, after giving ``trial`` (FAIL) its reason."""
        reason = f"not run: {self.watch.why or 'the launcher is gone'}"
        trial.set_user_attr(FAILURE_REASON_KEY, reason)
        return LauncherGone(reason)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """Run ``trial``: its value(s), or an exception that records why it has none."""
        if self.launcher_gone():
            raise self.gone(trial)
        config, log_path = self._prepare(trial)
        self.trials_run += 1
        return self._translate(trial, self._run(trial, config, log_path))

    def _prepare(self, trial: optuna.Trial) -> tuple[dict[str, Any], str | None]:
        """Own, sample and describe ``trial`` in the study; returns its config and log file."""
        if trial._trial_id not in self.storage.created_trial_ids:  # a queued trial, popped not created
            self.storage.set_trial_system_attr(trial._trial_id, OWNER_KEY, owner_record(self.task.run_id))
            self.storage.created_trial_ids.add(trial._trial_id)
        cfg = self.task.config
        sampled = suggest_all(trial, cfg.params)
        config = build_config(cfg.fixed, sampled)
        trial.set_user_attr(CONFIG_KEY, jsonable(config))
        log_path = None
        if self.task.log_dir:
            log_path = os.path.join(self.task.log_dir, trial_log_name(trial.number))
            trial.set_user_attr(LOG_FILE_KEY, log_path)
        if self.device is not None:
            trial.set_user_attr(GPU_KEY, self.device)
        # Params, sampler attrs and the config in one write, before the trial runs: other
        # workers' samplers see a running trial's params, and the dashboard its config.
        self.storage.flush_trial(trial._trial_id)
        return config, log_path

    def _run(self, trial: optuna.Trial, config: dict[str, Any], log_path: str | None) -> Outcome:
        """Run ``trial`` in the trial process, answering its ``report()`` calls with the pruner."""
        cfg = self.task.config

        def on_report(value: float, step: int) -> bool:
            if cfg.multi_objective:  # Optuna cannot record or prune these; config forbids a pruner
                if not self.warned_multi_report:
                    logger.warning("report() is ignored in a multi-objective search")
                    self.warned_multi_report = True
                return False
            trial.report(value, step)
            return trial.should_prune()

        self.admit()  # (done before the trial was created; a trial handed over another way waits here)
        admitted, self.admitted = self.admitted, False
        if self.jobs is not None:
            self.running_at_start = self.jobs.running()
        outcome: Outcome | None = None
        try:
            outcome = self.trials.run(
                config,
                trial_number=trial.number,
                log_path=log_path,
                timeout=cfg.trial_timeout,
                should_stop=self.launcher_gone,
                on_report=on_report,
            )
        finally:
            if admitted and self.jobs is not None:
                self.jobs.finished(None if outcome is None else outcome.peak_mib,
                                   out_of_memory=outcome is not None and bool(outcome.out_of_memory))
        if outcome.peak_mib is not None:
            trial.set_user_attr(PEAK_RSS_MIB_KEY, round(outcome.peak_mib, 1))
        if outcome.cpu_seconds is not None:
            trial.set_user_attr(CPU_SECONDS_KEY, outcome.cpu_seconds)
        if outcome.gpu_peak_mib is not None:
            trial.set_user_attr(PEAK_GPU_MIB_KEY, outcome.gpu_peak_mib)
        if outcome.pid is not None:
            trial.set_user_attr(TRIAL_PID_KEY, outcome.pid)
        return outcome

    def _translate(self, trial: optuna.Trial, outcome: Outcome) -> float | list[float]:
        """The value Optuna records, or raise: stopped (the loop ends), pruned, failed (PRUNED)."""
        if outcome.kind == "value" and outcome.value is not None:
            values, why = _fit_directions(outcome.value, len(self.task.config.directions))
            if values is not None:
                return values
            outcome = Outcome("error", reason=why, error_type="InvalidReturn")
        if outcome.kind == "died" and self.watch.stopped_now():  # killed by the shutdown
            outcome = Outcome("stopped", reason=outcome.reason, pid=outcome.pid)
        if outcome.kind == "stopped":
            reason = self.watch.stop_reason or f"stopped while the trial ran: {self.watch.why}; it will be re-run"
            trial.set_user_attr(FAILURE_REASON_KEY, reason)
            raise LauncherGone(reason)
        if outcome.kind == "died" and outcome.out_of_memory:
            self._out_of_memory(trial, outcome)
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


    def _out_of_memory(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """A trial the kernel killed for memory. Alone, the configuration is too big: PRUNED
        with the reason (counted; never the broken-code stop). Beside others, the parallelism
        was too high: FAIL (re-run, not counted) and this host runs fewer trials at once."""
        running = max(self.running_at_start, self.jobs.running() if self.jobs is not None else 1)
        peak = f"; its peak {outcome.peak_mib:.0f} MiB" if outcome.peak_mib else ""
        beside = running - 1
        others = f"{beside} other trial{'s' if beside != 1 else ''} of this search were running beside it" \
            if beside else "no other trial of this search was running"
        reason = f"out of memory: the kernel killed the trial's process at {outcome.out_of_memory}{peak}; {others}"
        if outcome.exit_code is not None:
            trial.set_user_attr(FAILURE_EXIT_CODE_KEY, outcome.exit_code)
        if not beside:
            reason += "; this configuration does not fit alone"
            trial.set_user_attr(FAILURE_REASON_KEY, reason)
            trial.set_user_attr(FAILURE_KIND_KEY, OUT_OF_MEMORY)
            logger.warning("Trial %d pruned: %s", trial.number, reason)
            raise optuna.TrialPruned(reason)
        reason += "; it will be re-run"
        trial.set_user_attr(FAILURE_REASON_KEY, reason)
        trial.set_user_attr(FAILURE_KIND_KEY, OUT_OF_MEMORY_BESIDE)
        logger.warning("Trial %d failed: %s", trial.number, reason)
        if self.jobs is not None:
            lowered = lower_open_slots(self.task.run_id, self.task.config.n_jobs, running)
            if lowered is not None:
                logger.warning(
                    "out of memory with %d trials at once (trial %d, at %s): running at most %d at once "
                    "%s", running, trial.number, outcome.out_of_memory, lowered,
                    "until memory holds more (n_jobs: auto)" if self.jobs.auto else "from now on",
                )
        raise MemoryRetry(reason, trial.number, trial.params)


def _fit_directions(value: float | list[float], n: int) -> tuple[float | list[float] | None, str]:
    """The value Optuna expects for ``n`` objectives, or None and why the return does not fit."""
    values = value if isinstance(value, list) else [value]
    if len(values) == n:
        return (values[0] if n == 1 else values), ""
    what = f"{len(values)} value{'' if len(values) == 1 else 's'} {values!r}" if isinstance(value, list) else f"one value {value!r}"
    return None, f"the training function returned {what}, but directions has {n}"


def _record_failure(trial: optuna.Trial, outcome: Outcome) -> None:
    """Store why ``trial`` failed (reason, kind, type, traceback, exit code) on the trial."""
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

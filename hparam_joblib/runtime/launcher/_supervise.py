"""Watching one launch's worker loops (:class:`Supervisor`): start them, then poll until they
are done, handling worker deaths, loops that end early, the stop rules, the stop-fast rule,
errors and Ctrl-C / SIGTERM (the launcher stops the loops and fails their RUNNING trials)."""

from __future__ import annotations

import logging
import signal

from hparam_joblib._errors import HparamError, StorageError
from hparam_joblib.runtime._failures import ErrorStop
from hparam_joblib.runtime._signals import (
    already_stopping,
    install_handlers,
    signum_of,
    stop_handlers,
    stopping,
)
from hparam_joblib.runtime.launcher._broken_code import check_errors
from hparam_joblib.runtime.launcher._deaths import DeathCount, on_deaths
from hparam_joblib.runtime.launcher._early_ends import EarlyEnds
from hparam_joblib.runtime.launcher._launch import Launch
from hparam_joblib.runtime.launcher._launcher_lease import LauncherLease
from hparam_joblib.runtime.launcher._progress import Progress
from hparam_joblib.runtime.launcher._shutdown import stop_launch
from hparam_joblib.runtime.launcher._stop_state import RungStop, StopState
from hparam_joblib.runtime.launcher._tail import LogFollower, run_trials
from hparam_joblib.runtime.loops._backend import Backend, Poll
from hparam_joblib.runtime.loops._jobs import (
    open_slots,
    remove_launch_files,
    running_trials,
    waiting_for_memory,
)
from hparam_joblib.runtime.loops._task import WorkerReport, workers_log_name
from hparam_joblib.storage import StudyStore, n_finished

logger = logging.getLogger("hparam_joblib")

_POLL_SECONDS = 0.5


class Supervisor:
    """Start and watch the worker loops of one launch (:meth:`run`).

    ``launch.cfg.n_trials`` is the workers' budget: the user's n_trials plus the ``retired`` trials.
    """

    def __init__(
        self, launch: Launch, backend: Backend, storage: StudyStore, study_id: int, *, retired: int = 0,
        stop_state: StopState | None = None, show_progress: bool = True,
    ) -> None:
        cfg = launch.cfg
        self.launch = launch
        self.backend = backend
        self.storage = storage
        self.study_id = study_id
        # A --tune-n-jobs rung is bounded: its running trials are stopped after its time.
        self.stop_state = stop_state or (
            RungStop.for_rung(launch.run_id, launch.run_seconds) if launch.run_seconds is not None else None
        )
        #: What the loops sent back when they ended.
        self.reports: list[WorkerReport] = []
        counts = storage.count_states(study_id)
        self.progress = Progress(
            cfg.n_trials - retired, n_finished(counts) - retired, cfg.direction, enabled=show_progress,
            show_best=not cfg.multi_objective, offset=retired,
        )
        if cfg.n_jobs_auto:
            self.progress.n_jobs_auto = f"auto {cfg.n_jobs}"
        self.errors = ErrorStop(cfg.max_trial_errors, launch.run_id, counts)
        self.lease = LauncherLease(storage, study_id, launch.run_id, cfg.heartbeat_interval) if backend.remote else None
        self.deaths = DeathCount(cfg.max_worker_deaths, n_finished(counts))
        self.fruitless = EarlyEnds(2 * cfg.n_jobs + 5, launch.location.display, cfg.n_trials)
        self.next_index = 0
        #: Trials this launch runs at once on this host: n_jobs, lowered when memory ran out (``loops/_jobs``).
        self.at_once = cfg.n_jobs
        #: The fewest it ever was (``n_jobs: auto`` opens slots again when memory holds more).
        self.lowest_at_once = cfg.n_jobs

    def run(self) -> int:
        """Start the loops and watch them until they are done; returns the signal number that
        stopped us, or 0.

        Raises:
            StorageError: the trial log directory cannot be created (nothing started).
            HparamError: the search stopped (worker deaths, the stop-fast rule, storage); the
                loops were stopped and their RUNNING trials failed first.
        """
        # Installed explicitly: a launcher started in the background of a script inherits SIGINT
        # ignored, and Ctrl-C / kill -INT must still stop it cleanly.
        previous = install_handlers(stop_handlers())
        follower = self._follow_logs()
        try:
            self._start_loops()
            while self.backend.active and self._poll(follower):
                pass
            self._drain()
            return 0
        except HparamError as err:
            self.progress.close()
            self._stop(f"the search stopped: {getattr(err, 'short', err)}")
            raise
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGUSR1 (StopSignal)
            return self._on_signal(stop)
        finally:
            if not stopping():  # after a stop signal, further ones stay noted-only until the exit
                install_handlers(previous)
            self.progress.close()
            follower.close()
            self._read_at_once()
            remove_launch_files(self.launch.run_id)

    def _follow_logs(self) -> LogFollower:
        """Create the log directory and follow this launch's workers' messages (and trials') in it."""
        log_dir = self.launch.log_dir
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(str(log_dir), f"cannot create the trial log directory ({err.strerror})") from err
        return LogFollower(log_dir, workers_log_name(self.launch.run_id),
                           trials=self.launch.cfg.trial_output == "terminal",
                           mine=run_trials(self.storage, self.study_id, self.launch.run_id))

    def _start_loops(self) -> None:
        """Write the lease (Dask), then start the first loops."""
        if self.lease is not None:
            self.lease.renew(force=True)  # before any loop starts: they read it
        # No more loops than trials left: --set n_trials=110 after 100 starts 10, not 32.
        remaining = self.launch.cfg.n_trials - n_finished(self.storage.count_states(self.study_id))
        self._start(max(1, min(self.launch.cfg.n_jobs, remaining)))

    def _start(self, n: int) -> None:
        """Start ``n`` more loops."""
        now = self.storage.count_states(self.study_id)
        trials_before = sum(v for k, v in now.items() if k != "WAITING")  # mixed into the seeds
        error_stop = self.errors if self.errors.armed else None
        self.backend.submit([
            self.launch.task(self.next_index + i, trials_before, error_stop, self.backend.remote) for i in range(n)
        ])
        self.next_index += n

    def _poll(self, follower: LogFollower) -> bool:
        """One round of watching; False once the search was stopped at the end of the stop grace."""
        news = self.backend.poll(_POLL_SECONDS)
        self.reports.extend(news.reports)
        check_errors(self.errors, self.storage, self.study_id, self.launch)  # before loops restart
        if self.lease is not None:
            self.lease.renew()
        self._handle_deaths(news)
        stopping = self.stop_state is not None and self.stop_state.check(
            self.storage, self.study_id, force=bool(news.reports)
        )
        if stopping and self._grace_ended():
            return False
        self._restart_loops(news, stopping)
        follower.poll()
        self._read_at_once()
        self.progress.update(self.storage, self.study_id)
        self.deaths.before = n_finished(self.storage.count_states(self.study_id))
        return True

    def _read_at_once(self) -> None:
        """How many trials this host runs at once now (a loop lowers it when memory runs out;
        ``n_jobs: auto`` raises it again), and with auto how many run and wait for memory."""
        cfg = self.launch.cfg
        self.at_once = open_slots(self.launch.run_id, cfg.n_jobs)
        self.lowest_at_once = min(self.lowest_at_once, self.at_once)
        self.progress.at_once = self.at_once if self.at_once < cfg.n_jobs else None
        if cfg.n_jobs_auto:
            running = running_trials(self.launch.run_id)
            waiting = waiting_for_memory(self.launch.run_id)
            if running or waiting:  # (between trials, and once all are done, the last count stays)
                self.progress.n_jobs_auto = f"auto {running}" + (f" ({waiting} waiting for memory)" if waiting else "")

    def _handle_deaths(self, news: Poll) -> None:
        """Fail the dead workers' trials, count the deaths (see ``_deaths``)."""
        if news.deaths or self.backend.remote:
            # On Dask a worker may die and its loop be re-run elsewhere between two polls:
            # also look for trials of this launch whose process is gone (this host).
            on_deaths(news.deaths, self.storage, self.study_id, self.launch.run_id, self.deaths)

    def _grace_ended(self) -> bool:
        """At the end of the stop grace, stop the trials still running; True: the search was stopped."""
        state = self.stop_state
        if state is None or not state.grace_over():
            return False
        run_id = self.launch.run_id
        state.grace_stopped = sum(o.get("run") == run_id for _, _, o in self.storage.running_owners(self.study_id))
        if not state.grace_stopped:
            return False
        logger.warning(state.grace_message(state.grace_stopped))
        self._stop(state.reason())
        return True

    def _restart_loops(self, news: Poll, stopping: bool) -> None:
        """Start loops again in place of those lost, and of those that ended too early."""
        timed = self.launch.deadline is not None or self.launch.run_seconds is not None  # loops end by the clock
        if not (news.lost or (news.reports and not timed)):
            return
        n_trials = self.launch.cfg.n_trials
        remaining = n_trials - n_finished(self.storage.count_states(self.study_id))
        # A loop ends by itself only once the study is done, or when the launcher looked
        # gone to it (its lease lapsed while this process was stalled), or a stop rule
        # fired: start it again in the first two cases.
        # A loop whose job slot closed (memory ran out) ended on purpose: it is not replaced.
        ended = [r for r in news.reports if not r.memory_limited]
        early = len(ended) if not timed and remaining > 0 and not stopping else 0
        if early:
            if not self.backend.remote:  # a Dask loop also ends when its lease lapsed
                self.fruitless.check(ended, n_trials - remaining, self.storage)
            logger.warning("%d worker loop(s) stopped before the study was done; starting again", early)
        if remaining > 0 and news.lost + early:
            self._start(min(news.lost + early, max(1, remaining)))

    def _drain(self) -> None:
        """Every loop ended by itself: loops of this launch that Dask might still re-run must not start trials."""
        if self.lease is not None:
            self.lease.stop()

    def _on_signal(self, stop: BaseException) -> int:
        """Ctrl-C, SIGTERM or SIGUSR1: stop the loops; returns the signal's number."""
        signum = signum_of(stop)
        self.progress.close()
        logger.warning("%s: stopping the workers", signal.Signals(signum).name)
        self._stop(f"interrupted by {signal.Signals(signum).name}")
        return int(signum)

    def _stop(self, reason: str) -> None:
        """Stop every loop of this launch and fail its RUNNING trials (see ``_shutdown``).

        A second stop signal meanwhile (SLURM's and systemd's SIGTERM reach every process and a
        batch script forwards its own; Ctrl-C pressed twice) must not cut this short, or the
        trials would stay RUNNING: it is noted, not raised, until the shutdown (bounded) is done."""
        previous = install_handlers(dict.fromkeys(stop_handlers(), already_stopping))
        try:
            stop_launch(self.backend, self.lease, self.storage, self.study_id, self.launch.run_id, reason)
        finally:
            if not stopping():  # a stop signal keeps them noted-only until the launcher exits
                install_handlers(previous)

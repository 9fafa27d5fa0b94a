"""The launcher: create the study once, start n_jobs worker loops (loky or Dask), supervise, summarise.

The launcher owns the schema (workers open the file without creating tables), Ctrl-C and
SIGTERM (workers ignore SIGINT; the launcher stops them and fails their RUNNING trials), and
worker deaths (it fails the dead workers' trials with a reason, says so, starts new loops, and
stops the search after ``max_worker_deaths`` deaths in a row without a finished trial).
Which engine runs the loops is decided in ``_backend`` only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from hparam_joblib._errors import HparamError, StorageError, UsageError, WorkerCrashError
from hparam_joblib._keys import CONFIG_KEY, ENQUEUED_KEY, FAILURE_REASON_KEY, FAILURE_TRACEBACK_KEY
from hparam_joblib._result import BestTrial, SearchResult
from hparam_joblib.config._schema import SearchConfig, StopRules
from hparam_joblib.runtime._failures import (
    ErrorStop,
    broken_code_error,
    count_errors,
    kind_counts,
    retire_errors,
    retired,
)
from hparam_joblib.runtime._history import (
    append_run,
    changes_note,
    check_space,
    previous_run,
    run_entry,
    settings_changes,
)
from hparam_joblib.runtime._stop import read_stop
from hparam_joblib.runtime._tracking import TrackingTarget, finish_parent, start_parent
from hparam_joblib.runtime.launcher._progress import Progress
from hparam_joblib.runtime.launcher._signals import install_handlers
from hparam_joblib.runtime.launcher._tail import LogFollower
from hparam_joblib.runtime.loops._backend import Backend, Death, make_backend
from hparam_joblib.runtime.loops._worker import (
    WORKERS_LOG,
    LauncherLease,
    WorkerReport,
    WorkerTask,
    trial_threads,
)
from hparam_joblib.runtime.trial._funcref import FunctionRef, make_ref
from hparam_joblib.runtime.trial._isolation import THREAD_VARS
from hparam_joblib.storage import (
    BudgetExhausted,
    RetryPolicy,
    StorageLocation,
    StudyStore,
    check_directions,
    fail_trial,
    location_for,
    n_finished,
    open_storage,
    owner_is_dead,
    preflight,
    prepare,
    reap_dead_owners,
)

logger = logging.getLogger("hparam_joblib")

_POLL_SECONDS = 0.5
#: A death with an unknown pid and a dead process found within this many seconds are one death.
_SAME_DEATH_SECONDS = 5.0


class _Terminated(Exception):
    """SIGTERM reached the launcher."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def storage_display(cfg: SearchConfig, save_dir: Path) -> str:
    """Where the study lives, as shown to the user: a file, or a URL without its password."""
    return location_for(cfg, save_dir).label


def log_dir_for(cfg: SearchConfig, save_dir: Path) -> Path:
    """``<save_db_directory>/<study>/``: the trial logs (``trial_00042.log``) and workers' messages."""
    return save_dir / cfg.study_name


def threads_display(cfg: SearchConfig, cores: int | None = None) -> str:
    """How many threads each trial's OpenMP/BLAS pools get, and why (for --dry-run and the summary)."""
    if cores is None:
        from loky import cpu_count

        cores = cpu_count()
    threads = trial_threads(cfg, cfg.n_jobs, cores)
    why = "threads_per_trial" if cfg.threads_per_trial is not None else f"{cores} cores // n_jobs {cfg.n_jobs}"
    exported = [f"{var}={os.environ[var]}" for var in THREAD_VARS if var in os.environ]
    text = f"{threads} thread{'s' if threads != 1 else ''} per trial ({why})"
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
        return _run_search(
            func, cfg, save_dir, backend, policy=policy, show_progress=show_progress, run_seconds=run_seconds,
            retry_failed=retry_failed,
        )
    finally:
        backend.close()


def _run_search(
    func: Callable[[dict[str, Any]], Any],
    cfg: SearchConfig,
    save_dir: Path,
    backend: Backend,
    *,
    policy: RetryPolicy | None = None,
    show_progress: bool = True,
    run_seconds: float | None = None,
    retry_failed: bool = False,
) -> SearchResult:
    started = time.monotonic()
    try:
        function = make_ref(func)
    except TypeError as err:
        raise UsageError(str(err)) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    policy = policy or RetryPolicy(deadline=cfg.lock_timeout, busy_timeout=min(10.0, cfg.lock_timeout / 2))
    location = location_for(cfg, save_dir)
    preflight(location, cfg.study_name, list(cfg.directions))
    prepare(location, policy)
    storage = open_storage(location, create_tables=True, policy=policy, heartbeat_interval=cfg.heartbeat_interval)
    try:
        storage.add_budget_index()
        storage.family = os.getpid()
        # The pruner is not stored in the database: each worker builds its own (it is consulted by
        # the worker whose trial reports), so the launcher's study needs none.
        study = optuna.create_study(
            storage=cast(BaseStorage, storage), study_name=cfg.study_name, directions=_directions(cfg), load_if_exists=True
        )
        # Again after creation: a launch that created the study between our pre-flight and here.
        check_directions(location.display, cfg.study_name, [d.name.lower() for d in study.directions],
                         list(cfg.directions))
        study_id = study._study_id
        run_id = uuid.uuid4().hex[:12]
        work, n_retired = _begin_run(cfg, storage, study_id, run_id, location, retry_failed)
        if cfg.enqueue:
            _enqueue(study, storage, work)

        reports: list[WorkerReport] = []
        interrupted = 0
        stop_state = None
        time_limit = None
        if run_seconds is None and cfg.stop.active:  # the search's own stop rules (not --tune-n-jobs)
            time_limit = cfg.stop.timeout
            stop_state = _StopState(run_id, cfg.stop, None if time_limit is None else time.time() + time_limit)
        tracking = None
        if n_finished(storage.count_states(study_id)) < work.n_trials:
            if cfg.mlflow is not None:
                tracking = start_parent(cfg.mlflow, cfg.study_name, storage, study_id, cfg.n_trials)
            deadline = None if time_limit is None else time.time() + time_limit
            if stop_state is not None:
                stop_state.deadline = deadline
            interrupted = _supervise(
                function, work, location, storage, study_id, run_id, policy, reports, show_progress, deadline,
                backend=backend, retired=n_retired, log_dir=log_dir_for(cfg, save_dir).resolve(),
                stop_state=stop_state, tracking=tracking, run_seconds=run_seconds,
            )
        else:
            errors = count_errors(storage, study_id, exclude=retired(storage, study_id))
            hint = (
                f"; {errors} of them failed by an error: after fixing the code, run the same command "
                "with --retry-failed to re-run those" if errors else ""
            )
            logger.info(
                "study %s already holds %d finished trials; nothing to run%s", cfg.study_name, cfg.n_trials, hint
            )
        result = _result(
            study, storage, cfg, location, started, reports, interrupted, n_retired, log_dir_for(cfg, save_dir)
        )
        if stop_state is not None and not interrupted and result.n_finished < cfg.n_trials:
            result = dataclasses.replace(result, stop_reason=stop_state.summary())
        if tracking is not None:
            finish_parent(tracking, dict(result.counts), result.best_value, result.interrupted)
        return result
    finally:
        # The kernel of a notebook runs the next search in this process: no connection of this
        # one stays open (they would wait for the garbage collector).
        storage.close()


def _begin_run(
    cfg: SearchConfig, storage: StudyStore, study_id: int, run_id: str, location: StorageLocation,
    retry_failed: bool,
) -> tuple[SearchConfig, int]:
    """Check the config against the study, reap dead trials, retire errors (``--retry-failed``)
    and record the run; returns the workers' config (budget: n_trials + retired) and the
    number of retired trials.

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
    append_run(storage, study_id, run_entry(cfg, run_id, len(held), changes, retried))
    return (dataclasses.replace(cfg, n_trials=cfg.n_trials + n_retired) if n_retired else cfg), n_retired


@dataclass
class _StopState:
    """The launcher's view of this run's stop rules (see ``_stop``): has one fired, and when
    does the grace for the trials still running end."""

    run_id: str
    rules: StopRules
    deadline: float | None
    why: str = ""
    #: ``time.time()`` when the rule fired; running trials get ``rules.grace`` seconds from it.
    since: float | None = None
    #: Trials still running at the end of the grace, stopped and marked FAIL.
    grace_stopped: int = 0
    checked: float = -math.inf

    def check(self, storage: StudyStore, study_id: int, force: bool = False) -> bool:
        """True once a rule fired (reads the study's stop record at most once a second, or now
        with ``force``: a loop just ended)."""
        if self.why:
            return True
        now = time.time()
        if self.deadline is not None and now >= self.deadline:
            self.why = f"timeout: {self.rules.timeout:g} s passed, so no new trial started"
            self.since = self.deadline
        elif (self.rules.no_improvement is not None or self.rules.at_value is not None) and (
            force or now - self.checked >= 1.0
        ):
            self.checked = now
            record = read_stop(storage.get_study_system_attrs(study_id), self.run_id)
            if record is not None:
                self.why = str(record["why"])
                self.since = float(record.get("at") or now)
        return bool(self.why)

    def grace_over(self) -> bool:
        """True once the trials still running have had their ``stop_grace``."""
        return self.since is not None and time.time() >= self.since + self.rules.grace

    def reason(self) -> str:
        """The ``failure_reason`` of a trial stopped at the end of the grace."""
        return (
            f"stopped: still running stop_grace ({self.rules.grace:g} s) after the search stopped "
            f"({self.why}); not counted, the next run re-runs it"
        )

    def summary(self) -> str:
        """Why the run stopped, for the summary."""
        if not self.why:  # e.g. every loop ended at the deadline before the launcher looked
            self.why = f"timeout: {self.rules.timeout:g} s passed, so no new trial started"
        text = self.why
        if self.grace_stopped:
            text += (
                f"; {self.grace_stopped} trial(s) still running after stop_grace ({self.rules.grace:g} s) "
                "were stopped (FAIL, re-run by the next run)"
            )
        return text


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
    function: FunctionRef,
    cfg: SearchConfig,
    location: StorageLocation,
    storage: StudyStore,
    study_id: int,
    run_id: str,
    policy: RetryPolicy,
    reports: list[WorkerReport],
    show_progress: bool,
    deadline: float | None = None,
    *,
    backend: Backend,
    retired: int = 0,
    log_dir: Path,
    stop_state: _StopState | None = None,
    tracking: TrackingTarget | None = None,
    run_seconds: float | None = None,
) -> int:
    """Start and watch the worker loops; returns the signal number that stopped us, or 0.

    ``cfg.n_trials`` is the workers' budget: the user's n_trials plus the ``retired`` trials.
    """
    counts = storage.count_states(study_id)
    progress = Progress(
        cfg.n_trials - retired, n_finished(counts) - retired, cfg.direction, enabled=show_progress,
        show_best=not cfg.multi_objective, offset=retired,
    )
    errors = ErrorStop(cfg.max_trial_errors, run_id, counts)
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    # Installed explicitly: a launcher started in the background of a script inherits SIGINT
    # ignored, and Ctrl-C / kill -INT must still stop it cleanly.
    previous = install_handlers(
        {signal.SIGTERM: on_sigterm, signal.SIGINT: signal.default_int_handler}
    )
    lease = LauncherLease(storage, study_id, run_id, cfg.heartbeat_interval) if backend.remote else None
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(str(log_dir), f"cannot create the trial log directory ({err.strerror})") from err
    follower = LogFollower(log_dir, WORKERS_LOG, trials=cfg.trial_output == "terminal")
    deaths = _DeathCount(cfg.max_worker_deaths, n_finished(counts))
    fruitless = EarlyEnds(2 * cfg.n_jobs + 5, location.display, cfg.n_trials)
    next_index = 0

    def start(n: int) -> None:
        nonlocal next_index
        now = storage.count_states(study_id)
        trials_before = sum(v for k, v in now.items() if k != "WAITING")  # mixed into the seeds
        backend.submit([
            WorkerTask(
                # The location holds absolute paths: a Dask worker's working directory differs.
                function=function, config=cfg, location=location, run_id=run_id,
                launcher_pid=os.getpid(), worker_index=next_index + i,
                policy=policy, deadline=deadline, run_seconds=run_seconds,
                lease_interval=cfg.heartbeat_interval if backend.remote else None,
                trials_before=trials_before, error_stop=errors if errors.armed else None,
                log_dir=str(log_dir), tracking=tracking,
                environ=None if backend.remote else dict(os.environ),
            )
            for i in range(n)
        ])
        next_index += n

    try:
        if lease is not None:
            lease.renew(force=True)  # before any loop starts: they read it
        # No more loops than trials left: --set n_trials=110 after 100 starts 10, not 32.
        remaining = cfg.n_trials - n_finished(storage.count_states(study_id))
        start(max(1, min(cfg.n_jobs, remaining)))
        while backend.active:
            news = backend.poll(_POLL_SECONDS)
            reports.extend(news.reports)
            _check_errors(errors, storage, study_id, cfg, location, function, log_dir)  # before loops restart
            if lease is not None:
                lease.renew()
            if news.deaths or backend.remote:
                # On Dask a worker may die and its loop be re-run elsewhere between two polls:
                # also look for trials of this launch whose process is gone (this host).
                _on_deaths(news.deaths, storage, study_id, run_id, deaths)
            stopping = stop_state is not None and stop_state.check(storage, study_id, force=bool(news.reports))
            if stop_state is not None and stopping and stop_state.grace_over():
                stop_state.grace_stopped = sum(o.get("run") == run_id for _, _, o in storage.running_owners(study_id))
                if stop_state.grace_stopped:
                    logger.warning("stop_grace passed: stopping %d running trial(s)", stop_state.grace_stopped)
                    _stop(backend, lease, storage, study_id, run_id, stop_state.reason())
                    break
            timed = deadline is not None or run_seconds is not None  # loops end by the clock
            if news.lost or (news.reports and not timed):
                remaining = cfg.n_trials - n_finished(storage.count_states(study_id))
                # A loop ends by itself only once the study is done, or when the launcher looked
                # gone to it (its lease lapsed while this process was stalled), or a stop rule
                # fired: start it again in the first two cases.
                early = len(news.reports) if not timed and remaining > 0 and not stopping else 0
                if early:
                    if not backend.remote:  # a Dask loop also ends when its lease lapsed
                        fruitless.check(news.reports, cfg.n_trials - remaining, storage)
                    logger.warning("%d worker loop(s) stopped before the study was done; starting again", early)
                if remaining > 0 and news.lost + early:
                    start(min(news.lost + early, max(1, remaining)))
            follower.poll()
            progress.update(storage, study_id)
            deaths.before = n_finished(storage.count_states(study_id))
        if lease is not None:
            lease.stop()  # loops of this launch that Dask might still re-run must not start trials
        return 0
    except HparamError as err:
        progress.close()
        _stop(backend, lease, storage, study_id, run_id, f"the search stopped: {getattr(err, 'short', err)}")
        raise
    except (KeyboardInterrupt, _Terminated) as stop:
        signum = signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT
        progress.close()
        logger.warning("%s: stopping the workers", signal.Signals(signum).name)
        _stop(backend, lease, storage, study_id, run_id, f"interrupted by {signal.Signals(signum).name}")
        return int(signum)
    finally:
        install_handlers(previous)
        progress.close()
        follower.close()


class EarlyEnds:
    """Loops that ended by themselves before the study was done, in the launcher's view, without
    running a trial or the launcher's finished count moving: each one found the study done.

    One now and then is a race (a loop saw the last trial finish just before the launcher's read).
    Many in a row mean the launcher's reads of the file are stale: loops would be restarted for
    ever. Then its connections are opened again once; if that does not help, the search stops
    with one line (a file system that does not keep SQLite's locks, such as a network one).
    """

    def __init__(self, limit: int, db: str, budget: int) -> None:
        self.limit = limit
        self.db = db
        self.budget = budget
        self.row = 0
        self.finished: int | None = None
        self.reopened = False

    def check(self, reports: list[WorkerReport], finished: int, storage: StudyStore) -> None:
        """Count these ends.

        Raises:
            StorageError: still in a row after the launcher opened its connections again.
        """
        if any(r.trials_run for r in reports) or finished != self.finished:
            self.row, self.finished = 0, finished
            return
        self.row += len(reports)
        if self.row < self.limit:
            return
        self.row = 0
        if not self.reopened:
            self.reopened = True
            logger.warning(
                "%d worker loops in a row found the study done while this launcher reads %d of %d "
                "trials finished: reading %s again over new connections", self.limit, finished, self.budget, self.db,
            )
            storage.close()
            return
        raise StorageError(
            self.db,
            f"worker loops keep finding the study done while the launcher reads {finished} of "
            f"{self.budget} trials finished, even over new connections: its reads of the file are "
            "stale (is it on a network file system? SQLite needs a local disk)",
        )


class _DeathCount:
    """Worker deaths in a row, without a trial finishing in between.

    A death is seen up to a poll after it happened, so a trial that finished just after it may
    be counted first. To never stop a search that makes progress, a death starts a new row when
    the study holds more finished trials than it surely held before the previous death (the count
    at the poll before that death was seen).
    """

    def __init__(self, limit: int, finished: int) -> None:
        self.limit = limit
        self.mark = finished
        #: Finished trials at the previous poll: surely finished before a death seen now.
        self.before = finished
        self.in_a_row = 0
        #: (host, pid) of the deaths counted: a death seen twice (left the cluster, then
        #: KilledWorker) counts once.
        self.seen: set[tuple[Any, Any]] = set()
        self.last_swept = -math.inf
        self.last_unknown = -math.inf

    def record(self, finished: int) -> int:
        if finished > self.mark:
            self.in_a_row = 0
        self.mark = self.before
        self.in_a_row += 1
        return self.in_a_row


def _on_deaths(
    found: list[Death], storage: StudyStore, study_id: int, run_id: str, count: _DeathCount
) -> None:
    """Fail the dead workers' trials (with the reason), say so, and stop after too many in a row.

    ``found`` are the deaths the backend saw; trials of this launch whose owner process is gone
    from this host are deaths too (one per pid), unless already counted.

    Raises:
        WorkerCrashError: ``max_worker_deaths`` deaths in a row without a finished trial.
    """
    events = [(death, _fail_dead_trials(storage, study_id, death)) for death in found]
    unnamed: dict[tuple[Any, Any], list[tuple[int, Any, Any]]] = {}
    for number, pid, owner in _fail_dead_trials(storage, study_id, None):
        if owner.get("run") == run_id:
            unnamed.setdefault((owner.get("host"), pid), []).append((number, pid, owner))
        else:
            logger.info("trial %d of another launch marked FAIL: its process (pid %s) is gone", number, pid)
    named = {(d.host, d.pid) for d in found}
    for (host, pid), failed in unnamed.items():
        if (host, pid) in named:  # the same death, its trials failed by the second look
            events = [(d, t + failed if (d.host, d.pid) == (host, pid) else t) for d, t in events]
        else:
            events.append((Death(f"worker process {pid} on {host} is gone", host, pid, found_by_sweep=True), failed))
    if not events:
        return
    finished = n_finished(storage.count_states(study_id))
    now = time.monotonic()
    swept = any(d.found_by_sweep for d, _ in events)
    for death, failed in events:
        which = ", ".join(f"trial {number} (pid {pid})" for number, pid, _ in failed) or "no running trial left"
        if death.pid is not None and (death.host, death.pid) in count.seen:
            continue  # seen before under another name (left the cluster / process gone / KilledWorker)
        if death.pid is not None:
            count.seen.add((death.host, death.pid))
        # A Dask worker that left before its pid was learnt and a dead owner found by the sweep
        # are most likely one death seen twice: count them once (never stop a search early).
        if death.pid_unknown and (swept or now - count.last_swept < _SAME_DEATH_SECONDS):
            logger.info("same worker death seen again: %s", death.what)
            continue
        if death.found_by_sweep:
            count.last_swept = now
            if now - count.last_unknown < _SAME_DEATH_SECONDS:
                count.last_unknown = -math.inf  # the other half of that one death
                continue
        if death.pid_unknown:
            count.last_unknown = now
        in_a_row = count.record(finished)
        logger.warning(
            "a worker process died: %s; %s marked FAIL and re-run "
            "[worker death %d in a row; the search stops at max_worker_deaths=%d]",
            death.what, which, in_a_row, count.limit,
        )
        if in_a_row >= count.limit:
            raise WorkerCrashError(
                f"{in_a_row} worker processes died in a row without a trial finishing "
                f"(max_worker_deaths={count.limit}); last: {death.what}, {which}; "
                "the failed trials' failure_reason says more"
            )


def _fail_dead_trials(
    storage: StudyStore, study_id: int, death: Death | None
) -> list[tuple[int, Any, dict[str, Any]]]:
    """Fail RUNNING trials owned by the dead worker: by host and pid (any host) when known,
    else (``death`` unknown or without a pid) any owner process found dead on this host.

    Returns:
        ``(number, pid, owner)`` of each trial failed.
    """
    failed = []
    for trial_id, number, owner in storage.running_owners(study_id):
        if not owner:
            continue
        pid = owner.get("pid")
        if death is not None and death.pid is not None:
            dead = pid == death.pid and owner.get("host") == death.host
        else:
            dead = owner_is_dead(owner)
        if dead:
            how = f" ({death.what})" if death is not None else ""
            reason = (
                f"its worker process (pid {pid} on {owner.get('host')}) died while the trial ran"
                f"{how}; the trial is run again"
            )
            if fail_trial(storage, trial_id, reason):
                failed.append((number, pid, owner))
    return failed


def _stop(
    backend: Backend, lease: LauncherLease | None, storage: StudyStore, study_id: int, run_id: str,
    reason: str,
) -> None:
    """Stop every loop of this launch and fail its RUNNING trials."""
    # Written before any worker is killed: loops on a shared cluster stop at their next check
    # (within a second), and a worker that sees its trial process killed by the shutdown (loky
    # kills a worker's children first) records the trial as stopped, not as its failure.
    (lease or LauncherLease(storage, study_id, run_id, interval=1.0)).stop(reason)
    backend.stop()
    if not backend.owns_workers:
        _wait_for_run_trials(storage, study_id, run_id, timeout=3.0)
    _fail_run_trials(storage, study_id, run_id, reason)


def _wait_for_run_trials(storage: StudyStore, study_id: int, run_id: str, timeout: float) -> None:
    """Give loops on a shared cluster a moment to fail their own trials (with their reason)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if not any(o.get("run") == run_id for _, _, o in storage.running_owners(study_id)):
                return
        except HparamError:
            return
        time.sleep(0.2)


def _check_errors(
    errors: ErrorStop, storage: StudyStore, study_id: int, cfg: SearchConfig, location: StorageLocation,
    function: FunctionRef, log_dir: Path,
) -> None:
    """Raise the stop-fast error when the run's first ``max_trial_errors`` trials all failed.

    Raises:
        TrainingCodeError: they did (the one line names the error, the user's file and line,
            and where the full traceback is).
    """
    if not errors.armed:
        return
    first = errors.check(storage, study_id, storage.count_states(study_id))
    if first:
        raise broken_code_error(
            first, cfg.max_trial_errors, cfg.study_name, location.display,
            _write_traceback(log_dir, cfg.study_name, first[-1]),
            main_file=function.path or None,
        )


def _write_traceback(log_dir: Path, study_name: str, trial: FrozenTrial) -> Path | None:
    """Write a failed trial's full traceback beside its log (``trial_00004.traceback.txt`` in the
    study's log directory); returns the file, or None when it cannot be written (the trial's
    ``failure_traceback`` attr holds it)."""
    text = trial.user_attrs.get(FAILURE_TRACEBACK_KEY)
    if not text:
        return None
    path = log_dir / f"trial_{trial.number:05d}.traceback.txt"
    reason = str(trial.user_attrs.get(FAILURE_REASON_KEY) or "").splitlines()[0:1]
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# trial {trial.number} of study {study_name}: {''.join(reason)}\n{text}")
    except OSError:
        return None
    return dashboard_relative(path)


def dashboard_relative(path: Path) -> Path:
    """``path`` relative to the working directory when it is under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else Path(rel)


def _fail_run_trials(storage: StudyStore, study_id: int, run_id: str, reason: str) -> None:
    """Fail this launch's RUNNING trials once its workers are dead (best effort)."""
    try:
        for trial_id, _number, owner in storage.running_owners(study_id):
            if owner.get("run") == run_id:
                fail_trial(storage, trial_id, reason, kind="interrupted")
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
    n_retired: int = 0,
    log_dir: Path | None = None,
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
        best_config = dict(best.user_attrs.get(CONFIG_KEY, {}))
        best_number = best.number
    best_trials = tuple(
        BestTrial(
            number=t.number, values=tuple(t.values or ()), params=dict(t.params),
            config=dict(t.user_attrs.get(CONFIG_KEY, {})),
        )
        for t in front
    )
    return SearchResult(
        study_name=cfg.study_name,
        storage_url=location.public_url,
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
        kinds=kind_counts(storage, study._study_id),
        retired=n_retired,
        trial_processes=sum(r.trial_processes for r in reports),
        threads_per_trial=max((r.threads for r in reports), default=0),
        log_dir="" if log_dir is None else str(log_dir),
    )


def _latency(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"count": float(len(ordered)), "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": ordered[-1] * 1000}

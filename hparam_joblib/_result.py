"""The result of a search, returned by the decorated function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BestTrial:
    """One best trial: the best one (one objective) or one of the Pareto front (several).

    Attributes:
        number: the trial number.
        values: its objective values, one per direction.
        params: its sampled parameters (dotted names).
        config: the full config its function received.
    """

    number: int
    values: tuple[float, ...]
    params: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SearchResult:
    """What a finished (or interrupted) search produced.

    Attributes:
        study_name: ``<experiment_name>_<tag>``.
        storage_url: what ``optuna.load_study`` takes: ``sqlite:///FILE``, a server URL without
            its password (libpq reads PGPASSWORD), or the journal file.
        db_path: where the study lives, as shown: the SQLite or journal file, or the server URL
            with its password as ``***``.
        n_trials: the study's budget (finished trials it aims for).
        counts: number of trials by state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ...).
        best_value: the best objective value, or None when no trial completed or the study
            has several objectives (see ``best_trials``).
        best_params: the sampled parameters of the best trial (dotted names).
        best_config: the full config the best trial's function received.
        best_trial_number: the best trial's number, or None.
        wall_time: seconds this call took.
        lock_retries: storage operations retried because SQLite was locked.
        trials_run: trials this call ran (0 when the study was already complete).
        interrupted: True when Ctrl-C or SIGTERM stopped the search.
        stop_signal: the signal number that stopped it (2 SIGINT, 15 SIGTERM), or 0.
        worker_pids: the loky worker processes that ran trials.
        storage_ops: workers' storage calls: ``count``, ``p50_ms``, ``p99_ms``, ``max_ms``.
        peak_trial_mib: the largest resident memory of any trial process, in MiB.
        directions: ``"minimize"``/``"maximize"``, one per objective.
        best_trials: the best trial (one objective) or the Pareto front (several), by number;
            empty when no trial completed.
        kinds: PRUNED and FAIL trials by kind (``error``, ``pruner``, ``timeout``,
            ``worker_died``, ``interrupted``: see ``_failures``).
        retired: trials that failed by an error and were retired by ``--retry-failed`` (still
            PRUNED in the study, not counted toward ``n_trials``).
        db_reason: why the database is where it is (how ``save_db_directory`` was resolved).
        trial_processes: warm trial processes started (one per worker, plus one for each that
            died, timed out or was recycled by ``trials_per_process``).
        threads_per_trial: the OpenMP/BLAS thread cap each trial process had (0: not capped,
            the user exported the variables).
        threads_seen: the most threads that used the CPU during one trial, in any trial
            process (each thread of the process that ran at least 10 ms of the trial, from
            ``/proc/self/task/*/stat``): what the libraries really started, whatever they were
            asked; 0 when no trial ran or the platform has no ``/proc``.
        cores_per_trial: the distinct numbers of cores the trial processes could run on (their
            CPU affinity), smallest first; empty when unknown.
        log_dir: where the trial logs are (``trial_00042.log``); '' when no trial ran.
        stop_reason: why a stop rule (``timeout``, ``stop_no_improvement``, ``stop_at_value``)
            ended this run before ``n_trials`` finished; empty otherwise.
        at_once: how many trials ran at once at the end, when a trial killed for memory beside
            others made the search run fewer than ``n_jobs`` (0: never lowered).
        n_jobs_auto: what ``n_jobs: auto`` chose and why (``up to 2 at once (the cores); 5 trial
            starts waited for memory (largest trial peak 517 MiB)``); '' without auto.
    """

    study_name: str
    storage_url: str
    db_path: str
    n_trials: int
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any]
    best_trial_number: int | None
    wall_time: float
    lock_retries: int = 0
    trials_run: int = 0
    interrupted: bool = False
    stop_signal: int = 0
    worker_pids: tuple[int, ...] = field(default=(), repr=False)
    storage_ops: dict[str, float] = field(default_factory=dict)
    peak_trial_mib: float = 0.0
    directions: tuple[str, ...] = ("minimize",)
    best_trials: tuple[BestTrial, ...] = ()
    kinds: dict[str, int] = field(default_factory=dict)
    retired: int = 0
    db_reason: str = ""
    trial_processes: int = 0
    threads_per_trial: int = 0
    threads_seen: int = 0
    cores_per_trial: tuple[int, ...] = ()
    log_dir: str = ""
    stop_reason: str = ""
    at_once: int = 0
    n_jobs_auto: str = ""

    @property
    def n_finished(self) -> int:
        """COMPLETE + PRUNED, less the retired trials: the trials that count toward ``n_trials``."""
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0) - self.retired

    @property
    def multi_objective(self) -> bool:
        """True when the study has several objectives."""
        return len(self.directions) > 1

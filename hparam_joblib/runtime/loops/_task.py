"""What the launcher hands each worker loop (:class:`WorkerTask`) and what it sends back
(:class:`WorkerReport`): plain data, pickled to loky and Dask workers by this module's path."""

from __future__ import annotations

from dataclasses import dataclass, field

from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime._failures import ErrorStop
from hparam_joblib.runtime._tracking import TrackingTarget
from hparam_joblib.runtime.trial._funcref import FunctionRef
from hparam_joblib.storage import RetryPolicy, StorageLocation


def workers_log_name(run_id: str) -> str:
    """``workers_<run id>.log``: the file in the log directory where the loky workers of one launch
    write their own messages; that launch alone shows them (two launches of a study share the
    directory, and each prints only what its own workers say)."""
    return f"workers_{run_id}.log"


def trial_log_name(number: int) -> str:
    """``trial_00042.log``."""
    return f"trial_{number:05d}.log"


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
    #: the launcher renews a lease in the study every third of it (Dask; see ``runtime/_lease.py``).
    lease_interval: float | None = None
    #: Trials the study held when the launcher started this loop: mixed into the sampler seed
    #: so that a resumed search never replays an earlier run's sequence (``worker_seed``).
    trials_before: int = 0
    #: The launch's position in the study's run history: mixed into the sampler seed so that
    #: identical launches of one study (a SLURM array) sample different configurations.
    launch_number: int = 0
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
    #: The most threads that used the CPU in one of its trials (0: none ran, or no /proc).
    threads_seen: int = 0
    #: The cores its trial process could run on (its CPU affinity; 0: unknown).
    cores: int = 0
    #: It ended because memory ran out and its job slot closed (``_jobs``): not to be replaced.
    memory_limited: bool = False
    #: Trials it started only after waiting for memory to hold them (``n_jobs: auto``).
    memory_waits: int = 0

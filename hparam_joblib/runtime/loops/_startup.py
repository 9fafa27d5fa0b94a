"""A worker loop's start-up: the gate that lets at most ``cores`` loops start at once on a host,
the thread cap and the cores of its trials, and its warm trial process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime._allocation import allocated_cores
from hparam_joblib.runtime.loops._cores import CoreLease, lease_cores
from hparam_joblib.runtime.loops._slots import Slot, slot_directory, take_slot
from hparam_joblib.runtime.loops._task import WorkerTask
from hparam_joblib.runtime.loops._watch import parent_gone
from hparam_joblib.runtime.trial._isolation import TrialProcess, thread_env

logger = logging.getLogger("hparam_joblib")

#: How often a loop waiting at the start-up gate looks for a free slot.
_GATE_POLL_SECONDS = 0.02


def startup_gate(task: WorkerTask) -> Slot | None:
    """With more loky loops than cores, at most ``cores`` of them start up at once (trial process,
    script import, storage) on this host, so the first ones run trials in a fraction of a second
    instead of all finishing their start-up together, seconds later. None: no gate needed (or
    the lock files cannot be made: then every loop starts at once, as without the gate).

    Exits the process when the launcher goes away while this loop waits (nobody would reuse it).
    """
    cores = allocated_cores()
    if task.lease_interval is not None or task.config.n_jobs <= cores:
        return None  # Dask loops are spread over hosts and threads by the cluster
    try:
        gate = take_slot(cores, slot_directory("start-gate"), f"uid{os.getuid()}", lambda: parent_gone(task),
                         first=task.worker_index, poll=_GATE_POLL_SECONDS)
    except OSError as err:
        logger.debug("no start-up gate (%s); this loop starts at once", err)
        return None
    if gate is None:
        logger.warning("launcher is gone; worker %d stops", os.getpid())
        os._exit(0)
    return gate


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
        return max(1, min(n_jobs, int(here)))
    except Exception:  # noqa: BLE001 - best effort; fall back to n_jobs
        return n_jobs


def start_trial_process(task: WorkerTask, device: str | None) -> tuple[TrialProcess, int, CoreLease | None]:
    """The worker's warm trial process, started now (it loads the user's function meanwhile),
    the threads its trials are capped at (0: not capped), and the cores it runs on (None: every
    core this loop may use), held until the loop releases them."""
    loops_here = _loops_on_this_host(task)
    counted = allocated_cores()
    threads = trial_threads(task.config, loops_here, counted)
    env = thread_env(threads, os.environ)
    cores = lease_cores(threads, loops_here, counted, os.environ, index=task.worker_index, launch=task.launcher_pid)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    process_log = None
    if task.log_dir:
        try:  # on another machine of a Dask cluster the directory may not be creatable
            Path(task.log_dir).mkdir(parents=True, exist_ok=True)
            process_log = os.path.join(task.log_dir, f"process_w{task.worker_index:03d}.log")
        except OSError as err:
            logger.warning("no trial logs on this machine: cannot create %s (%s)", task.log_dir, err.strerror)
    trials = TrialProcess(task.function, env, process_log, task.config.trials_per_process,
                          None if cores is None else cores.cpus)
    try:
        trials.start()
    except BaseException:
        if cores is not None:
            cores.release()
        raise
    capped = any(var in env for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
    return trials, threads if capped else 0, cores

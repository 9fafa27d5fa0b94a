"""Where the worker loops run: the one place that chooses loky or Dask (add Ray here).

Every backend runs the same task, :func:`~hparam_joblib.runtime.loops._worker.worker_main` (a ``study.optimize``
loop with the exact budget in the database), n times at once, and answers the launcher's poll
with what happened since the last one (:class:`Poll`): reports of loops that ended, worker
processes that died (with the host and pid that ran them, when known, so that their trials can be
failed with a reason) and how many loops were lost and must be started again.

Why the executors are driven directly rather than through ``joblib.Parallel``: joblib's dask
backend ignores ``n_jobs`` (it uses every thread of the cluster) and its ``Parallel`` hangs
forever when a task kills its worker on every attempt (``KilledWorker`` never surfaces); a
future per loop lets the launcher poll, count deaths, restart and stop.

* **loky** (this machine): loky's reusable executor. A dead worker breaks the whole pool (loky
  kills the other workers); that is one death, and every loop is started again.
* **dask**: a ``distributed.Client`` on ``dask_scheduler`` (an address, connected with a bounded
  timeout before anything is created), or a ``LocalCluster`` of n single-threaded worker processes.
  Dask re-runs a task whose worker died by itself (harmless: the budget lives in the database),
  so deaths are seen by polling where our tasks run: a worker that held one of our tasks and left
  the cluster died. ``KilledWorker`` (Dask gave up on a task) also counts, and the loop is
  resubmitted. Submitting exactly n tasks (``pure=False``) keeps at most n trials running at
  once on a cluster of any size.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hparam_joblib._errors import BackendError, HparamError
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime.loops._task import WorkerReport, WorkerTask
from hparam_joblib.runtime.loops._worker import worker_main

logger = logging.getLogger("hparam_joblib")

#: Seconds to wait for a Dask scheduler to answer the first connection.
CONNECT_TIMEOUT = 10.0
#: Seconds one status call to the scheduler may take while the search runs.
_CALL_TIMEOUT = 10.0
#: Seconds a Dask cluster may have no worker (or an unreachable scheduler) before the search stops.
NO_WORKERS_TIMEOUT = 60.0


@dataclass(frozen=True)
class Death:
    """A worker process that died while running one of our loops."""

    #: What is known: "loky worker exit code SIGKILL(-9)", "Dask worker tcp://... (pid 12 on h)".
    what: str
    #: The host and pid that ran the loop (its trials' owner), when known.
    host: str | None = None
    pid: int | None = None
    #: A Dask worker whose pid was never learnt (it may be a death also found by its trials).
    pid_unknown: bool = False
    #: Found from a trial of this launch whose owner process is gone (not from the backend).
    found_by_sweep: bool = False


@dataclass
class Poll:
    """What happened since the previous poll."""

    reports: list[WorkerReport] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    #: Loops that ended without a report and must be started again.
    lost: int = 0


class Backend(ABC):
    """Runs worker loops; see the module doc."""

    name: ClassVar[str]
    #: True when a loop cannot watch the launcher as its parent process (it reads a lease).
    remote: ClassVar[bool]

    #: True when the worker processes are ours (stopping kills them); False on a shared cluster.
    owns_workers: bool = True

    def open(self) -> None:
        """Check what can be checked before anything is created (a scheduler's address)."""

    def warm(self, n: int) -> None:
        """Start ``n`` workers now, so that they import while the launcher sets up the study."""

    @abstractmethod
    def submit(self, tasks: list[WorkerTask]) -> None:
        """Start one loop per task (the first call may start the workers)."""

    @abstractmethod
    def poll(self, timeout: float) -> Poll:
        """Wait up to ``timeout`` seconds for news. Raises the ``HparamError`` a loop raised."""

    @property
    @abstractmethod
    def active(self) -> int:
        """Loops submitted and not yet ended."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every loop now: kill our worker processes, or cancel our tasks on a shared cluster."""

    def close(self) -> None:
        """Release the cluster (end of the search, also after an error)."""


def make_backend(cfg: SearchConfig) -> Backend:
    """The backend the configuration asks for."""
    if cfg.backend == "dask":
        return DaskBackend(cfg.dask_scheduler)
    return LokyBackend()


# -- loky --------------------------------------------------------------------------------------


class LokyBackend(Backend):
    name = "loky"
    remote = False

    def __init__(self) -> None:
        self.executor: Any = None
        self.futures: set[Future[WorkerReport]] = set()

    def warm(self, n: int) -> None:
        from hparam_joblib.runtime.loops import _forkserver

        if _forkserver.context() is not None:
            # The preloaded server imports the worker code once, beside the launcher's set-up;
            # the workers are forked from it at the first submit, ready in milliseconds.
            _forkserver.start()
            return
        self.executor = self._executor(n)
        # Fresh interpreters: each worker that picks one up imports Optuna and the worker code
        # (what unpickling a real task would do) while the launcher opens the storage and
        # creates the study. The futures are not kept: the real tasks queue behind them.
        for _ in range(n):
            self.executor.submit(_warm_up)

    @staticmethod
    def _executor(size: int) -> Any:
        from loky import get_reusable_executor

        from hparam_joblib.runtime.loops import _forkserver

        # reuse="auto": an executor the user's own code made in this process (joblib.Parallel
        # in a notebook) has other arguments, so it is replaced rather than borrowed.
        return get_reusable_executor(max_workers=size, timeout=300, reuse="auto", context=_forkserver.context())

    def submit(self, tasks: list[WorkerTask]) -> None:
        # A new executor after a break (loky hands a fresh one when the last one is broken);
        # sized for every loop, so that restarting one never shrinks the pool under the others.
        size = len(self.futures) + len(tasks)
        self.executor = self._executor(size)
        self.futures |= {self.executor.submit(worker_main, task) for task in tasks}

    @property
    def active(self) -> int:
        return len(self.futures)

    def poll(self, timeout: float) -> Poll:
        from loky.process_executor import BrokenProcessPool, TerminatedWorkerError

        news = Poll()
        done, _ = wait(self.futures, timeout=timeout, return_when=FIRST_COMPLETED)
        broken = ""
        while done:
            self.futures -= done
            for future in done:
                try:
                    news.reports.append(future.result())
                except HparamError:
                    raise  # e.g. the database stayed locked past lock_timeout: stop the search
                except TerminatedWorkerError:
                    news.lost += 1
                    broken = "a loky worker process was terminated (killed, crashed or out of memory)"
                except BrokenProcessPool as err:  # loky could not hand a task or result over
                    news.lost += 1
                    broken = f"the loky pool broke ({_first_line(err)})"
                except Exception as err:  # a loop's own bug: log it, start the loop again
                    logger.error("a worker failed: %s: %s", type(err).__name__, err, exc_info=err)
                    news.lost += 1
                    news.deaths.append(Death(f"the worker loop failed: {type(err).__name__}: {str(err)[:200]}"))
            # A broken pool fails every future at once: collect them all in this poll.
            done = set()
            if broken and self.futures:
                done, _ = wait(self.futures, timeout=5)
        if broken:
            # The pool is gone: let loky finish killing its workers, so that their trials are
            # found dead (and failed with this reason) right now.
            self.executor.shutdown(wait=True)
            news.deaths.append(Death(broken + "; loky then stopped the other workers"))
        return news

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, kill_workers=True)
        self.futures.clear()

    def close(self) -> None:
        if self.executor is not None:
            # Idle workers would otherwise be joined at interpreter exit, seconds later.
            self.executor.shutdown(wait=True)
            self.executor = None


def _warm_up() -> int:
    """Run in a fresh loky worker: importing this module imported the worker code."""
    return os.getpid()


# -- dask --------------------------------------------------------------------------------------


def _ignore_sigint_plugin() -> Any:
    """A Dask worker plugin that ignores SIGINT in the worker process (run on every worker,
    restarted ones included). Built here so that importing this module never imports Dask."""
    from distributed import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        def setup(self, worker: Any) -> None:
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGUSR1):  # the launcher's (runtime/_signals)
                    signal.signal(signum, signal.SIG_IGN)

    return IgnoreSigint()


def _whoami() -> tuple[str, int]:
    """Run on a Dask worker: the host name and pid its trials' owner records carry."""
    return socket.gethostname(), os.getpid()


class DaskBackend(Backend):
    name = "dask"
    remote = True

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler
        self.client: Any = None
        self.cluster: Any = None
        self.futures: list[Any] = []
        #: Our task key -> the worker address running it, as of the previous poll.
        self.where: dict[str, str] = {}
        #: Worker address -> (host, pid), learnt with ``client.run`` when first seen.
        self.who: dict[str, tuple[str, int]] = {}
        self.counted: set[str] = set()
        self.no_workers_since: float | None = None
        self.warned = False
        self.owns_workers = scheduler == "local"
        #: The thread that asks the scheduler what runs where, and its pending question.
        self.caller: ThreadPoolExecutor | None = None
        self.asking: Future[Any] | None = None

    # -- connection ---------------------------------------------------------------------------
    def open(self) -> None:
        _quiet_dask()
        if self.scheduler == "local":
            return  # started by the first submit, with as many workers as loops
        from distributed import Client

        try:
            self.client = Client(self.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise BackendError(
                f"dask_scheduler {self.scheduler}: cannot connect within {CONNECT_TIMEOUT:g} s "
                f"({_first_line(err)}); is `dask scheduler` running there and reachable?"
            ) from None
        except ValueError as err:
            raise BackendError(f"dask_scheduler {self.scheduler}: {_first_line(err)}") from None

    def _start_local(self, n: int) -> None:
        from distributed import Client, LocalCluster

        # memory_limit=0: the nanny would otherwise kill a worker whose training uses more than
        # RAM/n_jobs. No dashboard: two searches at once would clash on its port.
        self.cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.CRITICAL, memory_limit=0, scheduler_port=0,
        )
        self.client = Client(self.cluster, set_as_default=False)
        # Ctrl-C in the terminal reaches every process of its group, our LocalCluster workers
        # included (each would print a KeyboardInterrupt traceback): the launcher stops them.
        self.client.register_plugin(_ignore_sigint_plugin(), name="hparam_joblib-ignore-sigint")

    # -- loops --------------------------------------------------------------------------------
    def submit(self, tasks: list[WorkerTask]) -> None:
        if self.client is None:
            self._start_local(len(tasks))
        for task in tasks:
            self.futures.append(self.client.submit(worker_main, task, pure=False))

    @property
    def active(self) -> int:
        return len(self.futures)

    def poll(self, timeout: float) -> Poll:
        from distributed import KilledWorker

        news = Poll()
        end = time.monotonic() + timeout
        while not any(f.done() for f in self.futures) and time.monotonic() < end:
            time.sleep(0.05)
        for future in [f for f in self.futures if f.done()]:
            self.futures.remove(future)
            self.where.pop(future.key, None)
            if future.status == "finished":
                news.reports.append(future.result())
                continue
            news.lost += 1
            if future.status != "error":  # cancelled or lost by the scheduler
                news.deaths.append(Death(f"the Dask scheduler dropped the task ({future.status})"))
                continue
            err = future.exception()
            if isinstance(err, HparamError):
                raise err
            if isinstance(err, KilledWorker):
                address = str(getattr(getattr(err, "last_worker", None), "address", ""))
                if address not in self.counted:  # already counted when it left the cluster
                    self.counted.add(address)
                    host, pid = self.who.get(address, (None, None))
                    tries = getattr(err, "allowed_failures", 0) + 1
                    news.deaths.append(Death(
                        f"Dask gave up on a loop after {tries} workers died running it (last: {address})", host, pid,
                        pid_unknown=pid is None,
                    ))
                continue
            logger.error("a worker failed: %s: %s", type(err).__name__, err)
            news.deaths.append(Death(f"the worker loop failed: {type(err).__name__}: {str(err)[:200]}"))
        news.deaths += self._departed()
        return news

    def _processing(self) -> dict[str, Any]:
        """``Client.processing()`` (worker address -> its tasks), bounded by ``_CALL_TIMEOUT``:
        asked from a helper thread, since the public call takes no timeout. A call still
        pending from a previous poll is waited for, never doubled."""
        if self.asking is None or self.asking.done():
            if self.caller is None:
                self.caller = ThreadPoolExecutor(1, thread_name_prefix="hparam_joblib-dask-status")
            self.asking = self.caller.submit(self.client.processing)
        try:
            return dict(self.asking.result(timeout=_CALL_TIMEOUT))
        except FutureTimeout:
            raise TimeoutError(f"no answer within {_CALL_TIMEOUT:g} s") from None

    def _departed(self) -> list[Death]:
        """Workers that ran one of our tasks at the previous poll and have left the cluster."""
        try:
            processing = self._processing()
        except Exception as err:  # noqa: BLE001 - scheduler gone or slow: bounded below
            self._no_workers(f"the scheduler does not answer ({_first_line(err)})")
            return []
        if not processing:
            self._no_workers("the cluster has no worker")
        else:
            self.no_workers_since = None
        deaths = []
        ours = {f.key for f in self.futures}
        for key, address in list(self.where.items()):
            if address not in processing and address not in self.counted:
                self.counted.add(address)
                host, pid = self.who.get(address, (None, None))
                where = f"pid {pid} on {host}" if pid is not None else "pid unknown"
                deaths.append(Death(f"Dask worker {address} ({where}) left the cluster", host, pid, pid_unknown=pid is None))
            if key not in ours:
                del self.where[key]
        for address, keys in processing.items():
            for key in keys:
                if key in ours:
                    self.where[key] = address
                    if address not in self.who:
                        self._learn(address)
        return deaths

    def _learn(self, address: str) -> None:
        try:
            self.who.update(self.client.run(_whoami, workers=[address], on_error="return"))
        except Exception:  # noqa: BLE001 - it may be dying already; then its pid stays unknown
            return
        if not isinstance(self.who.get(address), tuple):
            self.who.pop(address, None)

    def _no_workers(self, why: str) -> None:
        now = time.monotonic()
        if self.no_workers_since is None:
            self.no_workers_since = now  # workers restarting after a death: not news yet
            self.warned = False
        elif not self.warned and now - self.no_workers_since > 5:
            self.warned = True
            logger.warning("dask_scheduler %s: %s; waiting up to %g s", self.scheduler, why, NO_WORKERS_TIMEOUT)
        if now - self.no_workers_since > NO_WORKERS_TIMEOUT:
            raise BackendError(
                f"dask_scheduler {self.scheduler}: {why} for {now - self.no_workers_since:.0f} s; "
                "start workers (`dask worker <address>`) and run again"
            )

    def stop(self) -> None:
        if self.client is not None and self.futures:
            try:
                self.client.cancel(self.futures)
            except Exception as err:  # noqa: BLE001 - best effort; the loops also watch the lease
                logger.debug("cancelling the Dask tasks failed: %s", err)
        self.futures = []
        if self.cluster is not None:  # our own workers: end them (and their trials) now
            self.close()

    def close(self) -> None:
        for closing in (self.client, self.cluster):
            if closing is not None:
                try:
                    closing.close()
                except Exception as err:  # noqa: BLE001 - already gone
                    logger.debug("closing %s failed: %s", type(closing).__name__, err)
        self.client = self.cluster = None
        if self.caller is not None:
            self.caller.shutdown(wait=False, cancel_futures=True)
            self.caller = self.asking = None


def _quiet_dask() -> None:
    """Dask logs connection retries, worker restarts and shutdown noise as warnings; we report
    what matters ourselves, on one line."""
    for name in ("distributed", "distributed.client", "distributed.nanny", "distributed.scheduler",
                 "distributed.worker", "distributed.core", "distributed.comm"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]

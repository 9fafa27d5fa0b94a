"""The worker's side of a warm trial process: start it, run trials in it, say how each ended.

Why a separate process: loky ends every worker when one dies, so a trial that segfaults, calls
``os._exit`` or is SIGKILLed inside a worker would take the trials beside it down. The worker
only supervises: the trial process dies alone, the worker records why, starts a fresh one and
goes on. The same supervision gives per-trial timeouts (kill the process) and a way to stop
when the launcher dies.

Why one *warm* process for many trials (not a fork per trial): a fork per trial throws away
every per-process warm-up (imports, data loaded at module level, JIT and oneDNN kernels, the
allocator, a CUDA context) at the end of each trial; and forking a process that ran OpenMP or
CUDA hangs or fails in the child. So the worker starts a fresh interpreter (``subprocess``:
fork immediately followed by exec, which is fork-safe) before any user code is loaded; that
process imports the user's script once and runs trial after trial (``_trial_process``). It is
replaced only when it died, was killed (timeout, shutdown), or ran ``trials_per_process`` trials.

Fork-safety rules kept here: the worker never imports or runs user code (it holds a
:class:`~hparam_joblib.runtime.trial._funcref.FunctionRef`, plain data) and never forks without exec; thread
caps and the GPU are in the trial process's environment before its interpreter starts, and its
CPU affinity is taken by the process itself before it loads any user code (the worker's own
affinity never changes).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from hparam_joblib.runtime.trial._funcref import FunctionRef
from hparam_joblib.runtime.trial._gpu_memory import DeviceMemorySampler
from hparam_joblib.runtime.trial._memory import MemoryWatch, tree_mib
from hparam_joblib.runtime.trial._trial_process import BOOTSTRAP, peak_mib

_POLL_SECONDS = 0.2
#: How long a trial process may take to exit when asked to, before it is killed.
_EXIT_GRACE_SECONDS = 5.0
#: With ``trial_timeout`` set, a fresh process may take this long (or trial_timeout, if longer)
#: to load the script before its trial is killed: imports and module-level data loading are
#: not the trial's own time, but a script that hangs at import must not hang the search.
LOAD_TIMEOUT_FLOOR = 600.0
#: Lines of a failed trial's output kept in its failure reason.
TAIL_LINES = 10
#: A trial process's ``oom_score_adj``: when memory runs out, the kernel kills a trial (which the
#: worker reports and the search re-runs) before the launcher or a worker (which would end the
#: search or the trials beside it). Raising one's own score needs no privilege.
OOM_SCORE_ADJ = 500

#: Environment variables that size the thread pools of OpenMP, BLAS libraries, numexpr and numba
#: (joblib's list, ``joblib._parallel_backends.ParallelBackendBase.MAX_NUM_THREADS_VARS``).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
#: What core counting honours besides the pools' variables: ``joblib.cpu_count()`` (LightGBM's
#: and scikit-learn's defaults, ``n_jobs=-1``) and, from Python 3.13, ``os.cpu_count()``.
COUNT_VARS = ("LOKY_MAX_CPU_COUNT", "PYTHON_CPU_COUNT")

OutcomeKind = Literal["value", "error", "died", "timeout", "stopped", "pruned"]


@dataclass(frozen=True)
class Outcome:
    """How one call of the training function ended."""

    kind: OutcomeKind
    value: float | list[float] | None = None
    reason: str = ""
    error_type: str = ""
    traceback: str = ""
    exit_code: int | None = None
    step: int | None = None
    #: Peak resident memory of the trial process during this trial, in MiB (None when unknown).
    peak_mib: float | None = None
    #: The last lines the trial printed (stdout and stderr), for a failure's reason.
    output_tail: str = ""
    #: The pid of the trial process that ran it.
    pid: int | None = None
    #: CPU seconds (user + system, the process and its reaped children) the trial used, when known.
    cpu_seconds: float | None = None
    #: What the process ran out of when the kernel killed it for memory (``_memory.oom_cause``:
    #: "the memory cgroup's limit of 600 MiB (cgroup v1 /job)"), else "".
    out_of_memory: str = ""
    #: Peak GPU memory of the trial, in MiB, where PyTorch, NVML or nvidia-smi can tell (``_gpu_memory``).
    gpu_peak_mib: float | None = None


def thread_env(threads: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The thread caps to give a trial process: ``threads`` for each pool variable and core count
    the user did not export (an exported one wins), and TBB's inter-process coordination (as
    joblib does)."""
    env = {var: str(threads) for var in (*THREAD_VARS, *COUNT_VARS) if var not in environ}
    if "ENABLE_IPC" not in environ:
        env["ENABLE_IPC"] = "1"
    return env


def signal_name(code: int) -> str:
    """``SIGSEGV`` for 11, or ``signal 99`` when unknown."""
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def tail(path: str | None, lines: int = TAIL_LINES, max_bytes: int = 8192) -> str:
    """The last ``lines`` lines of a text file ('' when there is none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.rstrip() for line in data.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int | None, float | None]:
    """Wait for a dying process (kill it after 10 s); its exit code and peak RSS in MiB (from
    ``wait4``'s rusage: the high-water mark that the trial reset at its start)."""
    deadline = time.monotonic() + 10
    while proc.returncode is None:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            proc.poll()
            break
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024
        if time.monotonic() > deadline:
            TrialProcess._kill(proc)
            break
        time.sleep(0.02)
    return proc.returncode, None


#: Start a trial process in its own process group, so that a timeout kills what the trial
#: started too (a data loader's workers). A group, not a session (``setsid``): with the
#: scheduler's autogroups each session gets its own share of the CPU, which would favour the
#: trials over everything else on the machine. Python 3.10's subprocess cannot do it without
#: ``preexec_fn`` (unsafe in a process with threads): there the process shares the worker's group.
_OWN_PROCESS_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {}


class TrialProcess:
    """One warm trial process of a worker (see the module doc). Not thread-safe; one per worker.

    Args:
        ref: where the training function lives.
        env: environment variables for the process (thread caps, ``CUDA_VISIBLE_DEVICES``).
        process_log: where the process's output goes between trials (module-level prints).
        trials_per_process: replace the process after this many trials (None: never).
        cpus: the cores the process runs on (its CPU affinity), or None: those of the worker.
    """

    def __init__(self, ref: FunctionRef, env: Mapping[str, str], process_log: str | None,
                 trials_per_process: int | None = None, cpus: tuple[int, ...] | None = None) -> None:
        self.ref = ref
        self.env = dict(env)
        self.cpus = cpus
        self.process_log = process_log
        self.trials_per_process = trials_per_process
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.ready = False
        #: A message received while waiting for ``ready`` (a load error), for the next trial.
        self.pending: tuple[Any, ...] | None = None
        self.trials_in_process = 0
        #: Processes started so far (the first one included).
        self.started = 0
        #: The largest peak RSS seen of any trial, in MiB.
        self.peak_mib = 0.0
        #: CPU time of the trial process when the running trial was sent, and at the last poll.
        self._cpu_start: float | None = None
        self._cpu_last: float | None = None
        #: The most threads that used the CPU in one trial (``_trial_process.busy_threads``).
        self.threads_seen = 0
        #: The cores the process said it may run on (its affinity; 0: not known yet).
        self.cores_seen = 0
        #: The kernel's out-of-memory counters, read before each trial.
        self.memory = MemoryWatch()
        #: The most memory the trial process and its children held together, sampled (MiB).
        self._tree_peak = 0.0
        #: The trial's device memory seen from here (a process given a GPU, with NVML or nvidia-smi).
        self.gpu = DeviceMemorySampler.for_env(self.env)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start a fresh process now (it loads the function while the worker does other work)."""
        self.close()
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env.update(self.env)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                **_OWN_PROCESS_GROUP,
            )
        finally:
            theirs.close()
        _prefer_for_oom_kill(self.proc.pid)
        self.conn = Connection(ours.detach())
        self.conn.send(("init", self.ref, self.process_log, self.cpus))
        self.ready = False
        self.pending = None
        self.trials_in_process = 0
        self.started += 1

    def wait_ready(self, should_stop: Callable[[], bool], timeout: float = LOAD_TIMEOUT_FLOOR) -> bool:
        """Wait until the process has loaded the script (True), or failed to, died, or we must stop.

        A worker calls it before it takes its first trial, so that no trial sits RUNNING (holding
        a slot of the budget) while the script's imports and module-level code run.
        """
        deadline = time.monotonic() + timeout
        while self.conn is not None and not self.ready and time.monotonic() < deadline:
            if self.conn.poll(_POLL_SECONDS):
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    return False
                if message[0] == "ready":
                    self._ready(message)
                else:  # a load error: the next run() reports it as the trial's outcome
                    self.pending = message
                    return False
            elif not self.alive() or should_stop():
                return False
        return self.ready

    def _ready(self, message: tuple[Any, ...]) -> None:
        self.ready = True
        self.cores_seen = int(message[2])

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self, grace: float = _EXIT_GRACE_SECONDS) -> None:
        """Ask the process to exit; kill it past ``grace`` seconds (also when it is busy)."""
        proc, conn, ready = self.proc, self.conn, self.ready
        self.proc, self.conn, self.ready = None, None, False
        if proc is None:
            return
        if not ready:  # still loading the script (no trial needed it): no need to wait
            grace = 0.0
        elif conn is not None:
            try:
                conn.send(("exit",))
            except OSError:
                grace = 0.0
        try:
            proc.wait(grace) if grace else self._kill(proc)
        except subprocess.TimeoutExpired:
            self._kill(proc)
        if conn is not None:
            conn.close()

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        try:
            if not _OWN_PROCESS_GROUP:
                raise ProcessLookupError  # it shares the worker's group: kill it alone
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except OSError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # -- one trial -----------------------------------------------------------------------------

    def run(
        self,
        config: dict[str, Any],
        *,
        trial_number: int,
        log_path: str | None,
        timeout: float | None,
        should_stop: Callable[[], bool],
        on_report: Callable[[float, int], bool],
    ) -> Outcome:
        """Run ``func(config)`` in the warm process (:meth:`_run`), with the CPU seconds the trial
        used: the trial process's user + system time, its reaped children's included (DataLoader
        workers), from ``/proc`` between the request and the answer (the last sample when the
        process died). Never raises for anything the trial does."""
        self._cpu_start = self._cpu_last = None
        if self.gpu is not None:
            self.gpu.start()
        self._tree_peak = 0.0
        outcome = self._run(config, trial_number=trial_number, log_path=log_path, timeout=timeout,
                            should_stop=should_stop, on_report=on_report)
        if self._tree_peak > (outcome.peak_mib or 0.0):  # its children held memory too
            outcome = dataclasses.replace(outcome, peak_mib=round(self._tree_peak, 1))
            self.peak_mib = max(self.peak_mib, self._tree_peak)
        sampled = self.gpu.peak if self.gpu is not None else None
        if sampled is not None and outcome.gpu_peak_mib is None:  # PyTorch's own count wins where it has one
            outcome = dataclasses.replace(outcome, gpu_peak_mib=round(sampled, 1))
        end = process_cpu_seconds(outcome.pid) if outcome.pid is not None else None
        end = end if end is not None else self._cpu_last
        if self._cpu_start is not None and end is not None and end >= self._cpu_start:
            outcome = dataclasses.replace(outcome, cpu_seconds=round(end - self._cpu_start, 3))
        return outcome

    def _run(
        self,
        config: dict[str, Any],
        *,
        trial_number: int,
        log_path: str | None,
        timeout: float | None,
        should_stop: Callable[[], bool],
        on_report: Callable[[float, int], bool],
    ) -> Outcome:
        """Run ``func(config)`` in the warm process; never raises for anything the trial does.

        Args:
            config: the training function's argument.
            trial_number: exposed to the trial (``current_trial_number()``).
            log_path: the trial's log file (its stdout and stderr), or None.
            timeout: seconds before the trial is killed, or None; a fresh process loading the
                script gets ``max(timeout, LOAD_TIMEOUT_FLOOR)`` before the trial's clock starts.
            should_stop: polled while waiting; True kills the process (launcher gone, shutdown).
            on_report: called for each ``report(value, step)``; returns True to prune.
        """
        if self.pending is not None and self.proc is not None:
            failed_load = self.pending
            self.pending = None
            return self._finished(failed_load, log_path, self.proc.pid)
        if not self.alive():
            self.start()
        assert self.proc is not None and self.conn is not None
        started = time.monotonic()
        self.memory.start()
        pid = self.proc.pid
        seen_peak: float | None = None
        sent = False
        eof = False
        try:
            while True:
                if self.ready and not sent:
                    self._cpu_start = self._cpu_last = process_cpu_seconds(pid)
                    self.conn.send(("run", trial_number, config, log_path))
                    sent = True
                    started = time.monotonic()  # loading the script had its own trial_timeout
                limit = timeout if timeout is None or sent else max(timeout, LOAD_TIMEOUT_FLOOR)
                wait = _POLL_SECONDS
                if limit is not None:
                    wait = max(0.0, min(wait, started + limit - time.monotonic()))
                message = None
                if self.conn.poll(wait):
                    try:
                        message = self.conn.recv()
                    except (EOFError, OSError):  # the process is gone (``_died`` reaps it)
                        eof = True
                if message is not None:
                    tag = message[0]
                    if tag == "ready":
                        self._ready(message)
                        continue
                    if tag == "report":
                        prune = on_report(float(message[1]), int(message[2]))
                        self.conn.send(("prune",) if prune else ("continue",))
                        continue
                    return self._finished(message, log_path, pid)
                if sent:
                    sample = peak_mib(pid)
                    if sample is not None:
                        seen_peak = max(seen_peak or 0.0, sample)
                    self._cpu_last = process_cpu_seconds(pid) or self._cpu_last
                    if self.gpu is not None:
                        self.gpu.sample(pid)
                    tree = tree_mib(pid)
                    if tree is not None:
                        self._tree_peak = max(self._tree_peak, tree)
                if eof or (not self.alive() and not self.conn.poll(0)):
                    return self._died(log_path, pid, seen_peak, loading=not sent)
                if limit is not None and time.monotonic() - started >= limit:
                    self._discard()
                    what = "trial ran" if sent else "training script was still loading,"
                    return self._outcome("timeout", f"timeout (the {what} longer than {limit:g} s)",
                                         log_path, pid, seen_peak)
                if should_stop():
                    self._discard()
                    return self._outcome("stopped", "stopped: the search was shut down while the trial ran",
                                         log_path, pid, seen_peak)
        finally:
            if self.proc is not None and self.proc.pid == pid:
                self._after_trial()

    def _after_trial(self) -> None:
        """Count the trial; retire the process when it has run its share (the next trial starts
        a fresh one: no process is started that no trial needs)."""
        self.trials_in_process += 1
        if self.trials_per_process is not None and self.trials_in_process >= self.trials_per_process:
            self.close()

    def _discard(self) -> None:
        """Kill the process (timeout, shutdown): the next trial gets a fresh one."""
        proc, conn = self.proc, self.conn
        self.proc, self.conn, self.ready = None, None, False
        if proc is not None:
            self._kill(proc)
        if conn is not None:
            conn.close()

    def _outcome(self, kind: OutcomeKind, reason: str, log_path: str | None, pid: int,
                 peak: float | None, **extra: Any) -> Outcome:
        if peak is not None:
            self.peak_mib = max(self.peak_mib, peak)
        return Outcome(kind, reason=reason, peak_mib=peak, output_tail=tail(log_path or self.process_log),
                       pid=pid, **extra)

    def _finished(self, message: tuple[Any, ...], log_path: str | None, pid: int) -> Outcome:
        tag = message[0]
        if tag == "load_error":
            _, etype, text, tb = message
            self._discard()
            reason = f"the training script failed to load: {etype}: {text}" if text else \
                f"the training script failed to load: {etype}"
            return self._outcome("error", reason, self.process_log, pid, None, error_type=etype, traceback=tb)
        *body, peak, threads, gpu = message
        if peak is not None:
            self.peak_mib = max(self.peak_mib, peak)
        self.threads_seen = max(self.threads_seen, threads)
        gpu = round(gpu, 1) if gpu is not None else None
        if tag == "result":
            _, value, why = body
            if value is None:
                return Outcome("error", reason=why, error_type="InvalidReturn", peak_mib=peak,
                               output_tail=tail(log_path), pid=pid, gpu_peak_mib=gpu)
            return Outcome("value", value=value, peak_mib=peak, pid=pid, gpu_peak_mib=gpu)
        if tag == "pruned":
            return Outcome("pruned", reason=f"pruner at step {body[1]}", step=body[1], peak_mib=peak, pid=pid,
                           gpu_peak_mib=gpu)
        _, etype, text, tb = body
        return Outcome("error", reason=f"{etype}: {text}" if text else etype, error_type=etype,
                       traceback=tb, peak_mib=peak, output_tail=tail(log_path), pid=pid, gpu_peak_mib=gpu)

    def _died(self, log_path: str | None, pid: int, peak: float | None, loading: bool) -> Outcome:
        proc = self.proc
        self.proc, self.ready = None, False
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        code = None
        if proc is not None:
            code, lifetime_peak = _reap(proc)
            if lifetime_peak is not None:  # the kernel's peak RSS since the trial reset it
                peak = max(peak or 0.0, lifetime_peak)
        when = "while loading the training script" if loading else "before returning"
        memory = f"; peak memory {peak:.0f} MiB" if peak else ""
        out_of_memory = ""
        if code is not None and code < 0:
            name = signal_name(-code)
            if -code == signal.SIGKILL:
                out_of_memory = self.memory.cause() or ""
            if out_of_memory:
                name += f" (out of memory: the kernel's OOM killer, at {out_of_memory})"
            reason = f"the trial's process was killed by {name} {when}{memory}"
        else:
            reason = f"the trial's process exited with status {code} {when}{memory}"
        return self._outcome("died", reason, log_path if not loading else self.process_log, pid, peak,
                             exit_code=code, out_of_memory=out_of_memory)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of ``pid`` from ``/proc/<pid>/stat``, in seconds (None
    when unknown: not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def _prefer_for_oom_kill(pid: int) -> None:
    """Raise a trial process's ``oom_score_adj`` (:data:`OOM_SCORE_ADJ`); best effort."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
            fh.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass

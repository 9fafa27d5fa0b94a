"""The warm trial process: loads the user's training function once, then runs trial after trial.

Started by a worker (``_isolation.TrialProcess``) as ``python -c "...main(FD, PPID)"``,
a fresh interpreter (never a fork: the worker imported Optuna and SQLAlchemy and may run threads),
with the thread caps and the GPU already in its environment; its first act is to take the CPU
affinity it is sent (its share of the cores) before any user code loads. It imports nothing heavy itself; the
user's script (and what it imports) is the only code it loads, once, so imports, data loaded at
module level, JIT caches and a CUDA context are paid once per process, not once per trial.

Pipe protocol (a ``multiprocessing.connection.Connection`` on the inherited socket ``FD``):

* worker -> process: ``("run", trial_number, config, log_path)``, ``("exit",)``, and the answers
  ``("continue",)`` / ``("prune",)`` to a report.
* worker -> process first: ``("init", ref, process_log, cpus)`` (``cpus``: the cores to run on, or None).
* process -> worker: ``("ready", pid, cores)`` (the cores its affinity allows) or ``("load_error",
  type, message, traceback)`` once; per trial ``("report", value, step)`` any number of times,
  then one of ``("result", value, why)``, ``("error", type, message, traceback)``, ``("pruned",
  step)``, each followed by ``peak_mib, threads, gpu_peak_mib`` (:func:`busy_threads` of the
  trial; PyTorch's peak GPU memory in the trial, or None).

Each trial's stdout and stderr (file descriptors 1 and 2, so C-level output too) go to its own
log file; between trials they go to the process's log (module-level output of the user's script).
"""

from __future__ import annotations

import ctypes
import math
import numbers
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from hparam_joblib.runtime.trial._gpu_memory import reset_torch_peak, torch_peak_mib
from hparam_joblib.runtime.trial._memory import proc_mib

#: Set in a trial process (read by ``@hparam_search`` to refuse a search started at import time).
IN_TRIAL_PROCESS_ENV = "HPARAM_JOBLIB_TRIAL_PROCESS"


class _PrunedByPruner(BaseException):
    """Raised in the trial by ``report()`` when the pruner stops it."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class TrialContext:
    """What ``report()`` and ``current_trial_number()`` talk to while a trial runs."""

    def __init__(self, conn: Connection, trial_number: int) -> None:
        self.conn = conn
        self.trial_number = trial_number
        #: The step at which the pruner stopped the trial; once set, the trial ends PRUNED
        #: however the function goes on (even if it catches BaseException).
        self.pruned_step: int | None = None
        self._lock = threading.Lock()

    def report(self, value: float, step: int) -> None:
        """Send one intermediate value; raises ``_PrunedByPruner`` when the pruner says stop."""
        if self.pruned_step is not None:
            raise _PrunedByPruner(self.pruned_step)
        with self._lock:  # one request/answer at a time on the pipe
            self.conn.send(("report", value, step))
            answer = self.conn.recv()
        if answer[0] == "prune":
            self.pruned_step = step
            raise _PrunedByPruner(step)


#: The running trial's context (None between trials and in every other process).
CURRENT: TrialContext | None = None


def normalise_return(value: Any) -> tuple[float | list[float] | None, str]:
    """A finite float (or list of finite floats), or ``None`` and why it is not one."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number):
            return number, ""
        return None, f"the training function returned {number}, not a finite number"
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # 0-d arrays, tensors
        return normalise_return(value.item())
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and value:
        numbers_out: list[float] = []
        for item in value:
            one, why = normalise_return(item)
            if one is None or isinstance(one, list):
                return None, f"the training function returned {value!r}: {why or 'not a number'}"
            numbers_out.append(one)
        return numbers_out, ""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return None, f"the training function returned {shown} ({type(value).__name__}), not a number"


def _die_with_parent(expected_parent: int) -> None:
    """Ask Linux to SIGKILL this process if the worker dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != expected_parent:
        os._exit(1)


def _redirect_output(path: str) -> None:
    """Point file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr``) at ``path`` (appended)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # no log there (a machine without the directory): output stays where it was
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _reset_peak_memory() -> None:
    """Reset this process's peak RSS (VmHWM), so that each trial reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_mib(pid: int | str = "self") -> float | None:
    """VmHWM of a process in MiB (None when unknown)."""
    return proc_mib(pid, "status", "VmHWM")


def _thread_ticks() -> dict[str, int]:
    """CPU time (user + system, in clock ticks) of each thread of this process ({} without /proc)."""
    ticks: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return ticks
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ticks[tid] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            continue
    return ticks


def busy_threads(before: dict[str, int]) -> int:
    """The threads that used the CPU since ``before`` (at least one clock tick, 10 ms, each; the
    thread that ran the trial always counts): the pools a trial really ran, whatever they were
    asked; idle helpers (an allocator's background thread) are not counted. 0 when /proc cannot tell."""
    after = _thread_ticks()
    if not after:
        return 0
    return max(1, sum(1 for tid, ticks in after.items() if ticks - before.get(tid, 0) >= 1))


def _take_cores(cpus: Sequence[int] | None) -> None:
    """Run on ``cpus`` (and so does every thread and process started from here on)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:  # cores taken away meanwhile (a cpuset changed): keep the inherited set
            pass


def _cores() -> int:
    """How many cores this process may run on (0 when the platform cannot tell)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return 0


def _run_one(func: Callable[[dict[str, Any]], Any], conn: Connection, number: int,
             config: dict[str, Any]) -> tuple[Any, ...]:
    global CURRENT
    ctx = CURRENT = TrialContext(conn, number)
    try:
        value = func(config)
    except _PrunedByPruner as pruned:
        return ("pruned", pruned.step)
    except BaseException as err:  # noqa: BLE001 - everything the user code raises is reported
        if ctx.pruned_step is not None:  # the prune was caught and something else raised
            return ("pruned", ctx.pruned_step)
        return ("error", type(err).__name__, str(err), traceback.format_exc())
    finally:
        CURRENT = None
    if ctx.pruned_step is not None:  # the user's code swallowed the prune and returned
        return ("pruned", ctx.pruned_step)
    number_out, why = normalise_return(value)
    return ("result", number_out, why)


def main(fd: int, parent: int) -> None:
    """The trial process's life: load the function, then serve ``run`` requests until ``exit``."""
    _die_with_parent(parent)
    os.environ[IN_TRIAL_PROCESS_ENV] = "1"
    from hparam_joblib.runtime._signals import ignore_launcher_signals

    ignore_launcher_signals()  # the launcher owns Ctrl-C and SIGUSR1 (your code may take SIGUSR1 back)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):  # a trial's log reads like a terminal: line by line
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    conn = Connection(fd)
    request = conn.recv()  # ("init", ref, process_log, cpus)
    _, ref, process_log, cpus = request
    _take_cores(cpus)
    if process_log:
        _redirect_output(process_log)
    from hparam_joblib.runtime.trial._funcref import load

    try:
        func = load(ref)
    except BaseException as err:  # noqa: BLE001 - the script failed at import time
        conn.send(("load_error", type(err).__name__, str(err), traceback.format_exc()))
        return
    conn.send(("ready", os.getpid(), _cores()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request[0] != "run":
            return
        _, number, config, log_path = request
        if log_path:
            _redirect_output(log_path)
        _reset_peak_memory()
        reset_torch_peak()
        ticks = _thread_ticks()
        outcome = _run_one(func, conn, number, config)
        threads = busy_threads(ticks)
        gpu_peak = torch_peak_mib()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        if process_log:
            _redirect_output(process_log)
        conn.send((*outcome, peak_mib(), threads, gpu_peak))


#: The command line a worker starts a trial process with (``-c``, not ``-m``: with ``-m`` this
#: module would run as ``__main__`` and ``report()`` would see another copy of :data:`CURRENT`).
BOOTSTRAP = "import sys; from hparam_joblib.runtime.trial._trial_process import main; main(int(sys.argv[1]), int(sys.argv[2]))"

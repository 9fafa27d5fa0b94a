"""Run one call of the training function in a forked child process and report how it ended.

Why a child per trial: loky ends every worker when one dies, so a trial that segfaults,
calls ``os._exit`` or is SIGKILLed inside a worker would take the trials beside it down. Here the
worker only supervises: the child dies alone, the worker records why and goes on. The same
supervision gives per-trial timeouts (kill the child) and a way to stop when the launcher dies.

The pipe protocol (child -> worker): ``("result", payload)``, ``("error", type, message, tb)``,
``("pruned", step)``, and ``("report", value, step)`` answered by ``("continue",)`` or
``("prune",)``. After a ``prune`` answer the child ends with ``("pruned", step)`` however the
user's code reacts (``_ChildContext.pruned_step`` remembers it).
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import numbers
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

_POLL_SECONDS = 0.2
#: How long a child may take to exit after it sent its outcome, before it is killed.
_EXIT_GRACE_SECONDS = 5.0
#: Children that sent their outcome and are still exiting (flushing output, joining threads):
#: reaped in the background of the next trials instead of waited for (the worker goes on with
#: the next trial at once), killed past their grace time.
_EXITING: list[tuple[Any, float]] = []

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


class _ChildContext:
    """What ``report()`` in the child talks to."""

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


#: Set in the child process only; read by the public ``report()`` helper.
CURRENT: _ChildContext | None = None


class _PrunedByPruner(BaseException):
    """Raised in the child by ``report()`` when the pruner stops the trial."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def _die_with_parent(expected_parent: int) -> None:
    """Ask Linux to SIGKILL this process if the worker dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != expected_parent:
        os._exit(1)


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


def _child_main(func: Callable[[dict[str, Any]], Any], config: dict[str, Any], conn: Connection,
                parent: int, trial_number: int, env: Mapping[str, str] | None = None) -> None:
    global CURRENT
    _die_with_parent(parent)
    if env:  # e.g. CUDA_VISIBLE_DEVICES of the leased GPU: set before any user code runs
        os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    CURRENT = _ChildContext(conn, trial_number)
    try:
        value = func(config)
    except _PrunedByPruner as pruned:
        conn.send(("pruned", pruned.step))
        return
    except BaseException as err:  # noqa: BLE001 - everything the user code raises is reported
        if CURRENT.pruned_step is not None:  # the prune was caught and something else raised
            conn.send(("pruned", CURRENT.pruned_step))
            return
        conn.send(("error", type(err).__name__, str(err), traceback.format_exc()))
        return
    if CURRENT.pruned_step is not None:  # the user's code swallowed the prune and returned
        conn.send(("pruned", CURRENT.pruned_step))
        return
    number, why = normalise_return(value)
    conn.send(("result", number, why))


def signal_name(code: int) -> str:
    """``SIGSEGV`` for 11, or ``signal 99`` when unknown."""
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def run_isolated(
    func: Callable[[dict[str, Any]], Any],
    config: dict[str, Any],
    *,
    trial_number: int,
    timeout: float | None,
    should_stop: Callable[[], bool],
    on_report: Callable[[float, int], bool],
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Run ``func(config)`` in a forked child; never raises for anything the child does.

    Args:
        func: the user's training function.
        config: its argument.
        trial_number: exposed to the child (``current_trial_number()``).
        timeout: seconds before the child is killed, or None.
        should_stop: polled while waiting; True kills the child (launcher gone, shutdown).
        on_report: called for each ``report(value, step)``; returns True to prune.
        env: environment variables set in the child before ``func`` runs (the leased GPU).
    """
    reap_exiting()
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(
        target=_child_main, args=(func, config, theirs, os.getpid(), trial_number, env), daemon=True
    )
    started = time.monotonic()
    child.start()
    theirs.close()
    try:
        while True:
            wait = _POLL_SECONDS
            if timeout is not None:
                wait = max(0.0, min(wait, started + timeout - time.monotonic()))
            message = None
            if ours.poll(wait):
                try:
                    message = ours.recv()
                except (EOFError, OSError):
                    return _died(child)
            if message is not None:
                tag = message[0]
                if tag == "report":
                    prune = on_report(float(message[1]), int(message[2]))
                    ours.send(("prune",) if prune else ("continue",))
                    continue
                if child.is_alive():  # its outcome is in: let it finish exiting on its own
                    _EXITING.append((child, time.monotonic() + _EXIT_GRACE_SECONDS))
                if tag == "result":
                    _, value, why = message
                    if value is None:
                        return Outcome("error", reason=why, error_type="InvalidReturn")
                    return Outcome("value", value=value)
                if tag == "pruned":
                    return Outcome("pruned", reason=f"pruner at step {message[1]}", step=message[1])
                _, etype, text, tb = message
                return Outcome("error", reason=f"{etype}: {text}" if text else etype,
                               error_type=etype, traceback=tb)
            if not child.is_alive() and not ours.poll(0):
                return _died(child)
            if timeout is not None and time.monotonic() - started >= timeout:
                _kill(child)
                return Outcome("timeout", reason=f"timeout (trial ran longer than {timeout:g} s)")
            if should_stop():
                _kill(child)
                return Outcome("stopped", reason="stopped: the search was shut down while the trial ran")
    finally:
        if child.is_alive() and not any(c is child for c, _ in _EXITING):
            _kill(child)
        ours.close()


def reap_exiting(wait: bool = False) -> None:
    """Collect children that have exited; kill those past their grace time (or all, ``wait``:
    each gets what is left of its grace time first)."""
    now = time.monotonic()
    still: list[tuple[Any, float]] = []
    for child, deadline in _EXITING:
        if wait:
            child.join(max(0.0, deadline - now))
        if not child.is_alive():
            child.join(0)
        elif wait or now >= deadline:
            _kill(child)
        else:
            still.append((child, deadline))
    _EXITING[:] = still


def _kill(child: Any) -> None:
    try:
        child.kill()
    except (OSError, AttributeError):
        pass
    child.join(5)


def _died(child: Any) -> Outcome:
    child.join(5)
    code = child.exitcode
    if code is not None and code < 0:
        name = signal_name(-code)
        return Outcome("died", reason=f"the trial's process was killed by {name}", exit_code=code)
    return Outcome("died", reason=f"the trial's process exited with status {code} before returning",
                   exit_code=code)

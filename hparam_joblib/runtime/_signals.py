"""The launcher's stop signals, and handlers installed for a while and put back.

Ctrl-C (SIGINT), SIGTERM (``kill``, systemd, SLURM at a job's time limit) and SIGUSR1 (what
clusters ask SLURM to send ahead of the limit: ``--signal=B:USR1@120``) all stop a search the
same way: the launcher stops its loops, fails their RUNNING trials as interrupted (re-run by the
next launch, never counted) and exits with 128 + the signal's number (130, 143, 138), which
``--requeue`` scripts and SLURM's ``RequeueExit`` can tell from a finished (0) or broken (1, 2)
search. SIGINT and SIGUSR1 often reach every process of a job or terminal: the launcher's
children ignore them (:data:`LAUNCHER_ONLY`), so that the launcher alone decides and a trial is
never blamed for the signal.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, ClassVar

#: Besides Ctrl-C, the signals that stop a search cleanly.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
#: Signals the launcher alone acts on: its workers, preloaded server and trial processes ignore
#: them (a training function may still install its own handler, e.g. Lightning's SLURM requeue).
LAUNCHER_ONLY: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGUSR1)


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 reached the launcher: it unwinds like Ctrl-C, remembering which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Stopping:
    """Whether a stop signal came (the launcher is stopping) and which ones were said again."""

    stopping = False
    said: ClassVar[set[int]] = set()


def raise_stop(signum: int, frame: object) -> None:
    """The handler of Ctrl-C and :data:`STOP_SIGNALS` while the launcher runs: the first one
    unwinds the main thread (a KeyboardInterrupt); from then on the launcher is stopping and
    every further one is only noted (:func:`already_stopping`), so that a signal repeated (a
    batch script forwarding SLURM's SIGTERM that every process got too, Ctrl-C pressed twice)
    cannot cut the shutdown short and leave trials RUNNING."""
    _Stopping.stopping = True
    install_handlers(dict.fromkeys(stop_handlers(), already_stopping))
    raise StopSignal(signum)


def already_stopping(signum: int, frame: object) -> None:
    """A stop signal while the launcher is stopping: said once per signal, never raised."""
    import logging

    if signum not in _Stopping.said:
        _Stopping.said.add(signum)
        logging.getLogger("hparam_joblib").warning("%s: already stopping", signal.Signals(signum).name)


def search_done(signum: int, frame: object) -> None:
    """A stop signal after the loops finished on their own (the summary is being written): the
    search is done, so it ends as done (exit 0); said once per signal."""
    import logging

    if signum not in _Stopping.said:
        _Stopping.said.add(signum)
        logging.getLogger("hparam_joblib").warning("%s: the search is already done; finishing",
                                                   signal.Signals(signum).name)


def stopping() -> bool:
    """Has a stop signal come (the handlers now only note further ones)?"""
    return _Stopping.stopping


def reset_stopping() -> None:
    """A new search in this process (a notebook kernel): stop signals stop it again."""
    _Stopping.stopping = False
    _Stopping.said = set()


def stop_handlers() -> dict[Any, Any]:
    """Ctrl-C and the stop signals, each raising (a KeyboardInterrupt) in the main thread."""
    return {signal.SIGINT: raise_stop, **{s: raise_stop for s in STOP_SIGNALS}}


def signum_of(stop: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: its own for :class:`StopSignal`, else SIGINT."""
    return int(stop.signum) if isinstance(stop, StopSignal) else int(signal.SIGINT)


def ignore_launcher_signals() -> None:
    """In the launcher's children (main thread only): leave :data:`LAUNCHER_ONLY` to the launcher."""
    if threading.current_thread() is threading.main_thread():
        for signum in LAUNCHER_ONLY:
            signal.signal(signum, signal.SIG_IGN)


_catcher_lock = threading.Lock()
_catcher: threading.Thread | None = None


def shield_children() -> bool:
    """Block SIGUSR1 in the calling (main) thread, so that every process and thread it starts
    from now on inherits the block (across exec too) and a SIGUSR1 sent to the whole job cannot
    kill a worker, a trial or a resource tracker in its first instants, before it could ignore
    it. The launcher still gets it: a sleeping thread of ours, started first with SIGUSR1
    unblocked, takes the signal and Python runs its handler in the main thread. Returns True
    when the block was set (undo it with :func:`unshield`)."""
    global _catcher
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return False
    with _catcher_lock:
        if _catcher is None:
            _catcher = threading.Thread(target=_sleep_forever, name="hparam_joblib-signals", daemon=True)
            _catcher.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    return True


def unshield() -> None:
    """Undo :func:`shield_children` in the main thread (a notebook kernel goes on)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def _sleep_forever() -> None:
    event = threading.Event()
    while True:
        event.wait(3600)


def install_handlers(handlers: dict[Any, Any]) -> dict[Any, Any]:
    """Install signal handlers (main thread only); returns the previous ones, to install back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}

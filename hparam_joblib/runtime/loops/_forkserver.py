"""Loky workers forked from a preloaded server that never ran user code (ready in milliseconds).

A fresh loky worker is a new interpreter that imports Optuna, SQLAlchemy and our worker code
(about 0.7 CPU-s each); 32 of them on 2 cores take 10 s before the first trial. Here the worker
code is imported once, in a *server*: a fresh interpreter (fork+exec from the launcher, like any
subprocess) that imports :mod:`hparam_joblib.runtime.loops._zygote` and then only forks. Each loky worker is a
fork of it, with the modules already in memory.

Fork safety (docs/ARCHITECTURE.md): the server never imports or runs user code and has one
thread (``_zygote`` caps the BLAS/OpenMP pools to 1 before NumPy loads, so OpenBLAS starts no
thread; the worker gets the user's environment back right after the fork). Its children are
loky workers only; training runs in the worker's trial process, a fresh interpreter.

It is the standard library's forkserver with one change: a worker does not re-import the user's
``__main__`` script (the stdlib would, in every worker, to unpickle objects defined there; our
worker tasks are plain data, as with loky's own start method). Private parts of
``multiprocessing`` used: ``popen_forkserver.Popen`` and ``forkserver.ForkServer`` (listed in
docs/ARCHITECTURE.md); where they differ from what this expects, the workers start as loky's
own fresh interpreters instead (:func:`context` returns None).

The server is started once per launcher process (a notebook kernel keeps it across searches)
and ends after the launcher and its last worker (the stdlib's "alive" pipe). A worker forked
from it is not the launcher's child, so it watches the launcher with :func:`launcher_gone`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from typing import Any

logger = logging.getLogger("hparam_joblib")

#: What the server imports (and nothing else).
PRELOAD = ["hparam_joblib.runtime.loops._zygote"]
#: Set in a worker forked from the server: the server's pid (the worker's parent).
FORKED_FROM: int | None = None

_lock = threading.Lock()
_context: Any = None
#: The server could not start in this process (see :func:`start`): no preloaded workers.
_failed = False

try:  # the stdlib's forkserver (POSIX); the classes must be importable in the worker (pickled by name)
    from multiprocessing import context as _mp_context
    from multiprocessing import forkserver as _forkserver
    from multiprocessing import popen_forkserver as _popen_forkserver
    from multiprocessing import reduction as _reduction
    from multiprocessing import spawn as _spawn
    from multiprocessing import util as _util

    _SERVER: Any = _forkserver.ForkServer()
    _SERVER.set_forkserver_preload(PRELOAD)

    class PreloadedPopen(_popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            # As the stdlib's, but from our server, and without the user's __main__.
            prep_data = _spawn.get_preparation_data(process_obj._name)
            prep_data.pop("init_main_from_path", None)
            prep_data.pop("init_main_from_name", None)
            buf = io.BytesIO()
            _mp_context.set_spawning_popen(self)
            try:
                _reduction.dump(prep_data, buf)
                _reduction.dump(process_obj, buf)
            finally:
                _mp_context.set_spawning_popen(None)
            self.sentinel, w = _SERVER.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
            parent_w = os.dup(w)  # the child's sentinel of this process, as in the stdlib
            self.finalizer = _util.Finalize(self, _util.close_fds, (parent_w, self.sentinel))  # type: ignore[attr-defined]
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = _forkserver.read_signed(self.sentinel)

    class PreloadedProcess(_mp_context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:
            return PreloadedPopen(process_obj)

    class PreloadedContext(_mp_context.ForkServerContext):
        Process = PreloadedProcess

    _AVAILABLE = True
except (ImportError, AttributeError) as _err:  # Windows, or a Python whose internals moved
    _AVAILABLE = False


#: Set to ``0`` to start every loky worker as a fresh interpreter (loky's own start method).
ENV_SWITCH = "HPARAM_JOBLIB_PRELOADED_WORKERS"


def context() -> Any:
    """The shared context (built on first use), or None: no stdlib forkserver here, a Python
    outside the tested range (``_tested``: 3.14 changed the forkserver), or switched off with
    ``HPARAM_JOBLIB_PRELOADED_WORKERS=0``."""
    global _context
    from hparam_joblib._tested import python_tested

    if not _AVAILABLE or _failed or os.environ.get(ENV_SWITCH, "1") == "0" or not python_tested():
        return None
    with _lock:
        if _context is None:
            _context = PreloadedContext()
        return _context


def start() -> None:
    """Start the server now (it imports while the launcher sets up); cheap when it runs already.

    A server that cannot start (its socket lives in the temporary directory: a ``TMPDIR`` longer
    than a Unix socket path allows, a read-only one) is not an error: the workers start as loky's
    own fresh interpreters instead, as with ``HPARAM_JOBLIB_PRELOADED_WORKERS=0``."""
    global _failed
    ctx = context()
    if ctx is not None:
        try:
            _SERVER.ensure_running()
        except OSError as err:
            _failed = True
            logger.debug("no preloaded worker server (%s); the workers start as fresh interpreters", err)


def launcher_gone() -> bool:
    """In a worker forked from the server: has the launcher ended (or the server died)?

    The server outlives the launcher while any worker runs (each holds the stdlib's "alive"
    pipe), so the worker cannot watch its parent pid alone: it watches the launcher through the
    sentinel multiprocessing gives every child (``parent_process()``, closed when it dies).
    """
    import multiprocessing

    if os.getppid() != FORKED_FROM:
        return True
    parent = multiprocessing.parent_process()
    return parent is None or not parent.is_alive()


def forked_child(parent: int) -> None:
    """Called by ``_zygote`` in each fork of the server."""
    global FORKED_FROM
    FORKED_FROM = parent

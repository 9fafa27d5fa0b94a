"""Imported by the preloaded server only (``_forkserver``): the worker code, with no thread started.

Before NumPy loads (Optuna imports it), the BLAS and OpenMP pools are capped to one thread, so
that OpenBLAS starts none and the server stays single-threaded, safe to fork. Each forked worker
gets the launcher's environment back at once (the caps it passes to its trial process are built
from that environment, so a user's ``OMP_NUM_THREADS`` still wins), and records its parent.
"""

from __future__ import annotations

import os
import signal

from hparam_joblib.runtime.trial._isolation import THREAD_VARS

_SAVED = {var: os.environ.get(var) for var in THREAD_VARS}
for _var in THREAD_VARS:
    os.environ[_var] = "1"


def _after_fork_in_child() -> None:
    for var, value in _SAVED.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    from hparam_joblib.runtime.loops import _forkserver

    _forkserver.forked_child(os.getppid())


os.register_at_fork(after_in_child=_after_fork_in_child)
# The launcher owns Ctrl-C and SIGUSR1 (a terminal's SIGINT reaches the whole process group, a
# SLURM --signal the job's every process; runtime/_signals.LAUNCHER_ONLY); the server hands this
# disposition to its children, which ignore them from their first instruction.
for _signum in (signal.SIGINT, signal.SIGUSR1):
    signal.signal(_signum, signal.SIG_IGN)

import cloudpickle  # noqa: F401  - what unpickling a loky task needs
import loky.process_executor  # noqa: F401
import sqlalchemy.dialects.sqlite.pysqlite  # noqa: F401  - an engine imports its dialect on first use
from sqlalchemy.orm import configure_mappers

import hparam_joblib.runtime.loops._backend  # noqa: F401  - Optuna, SQLAlchemy, the worker and storage code

# Done on the first query of every process otherwise (Optuna's models' ORM mappers).
configure_mappers()

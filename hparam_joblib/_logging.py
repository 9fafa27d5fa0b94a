"""The package logger's one stderr handler (the launcher and the workers each set it up once).

Lines go through ``tqdm.write``: while the launcher's progress bar is shown, a log line is
printed above it instead of being appended to the bar's line.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

logger = logging.getLogger("hparam_joblib")


def tqdm_class() -> Any:
    """tqdm, with a thread lock in place of its default multiprocessing one.

    tqdm's default write lock includes a named POSIX semaphore: a process stopped by SIGKILL (a
    loky worker when the search stops) never unlinks it, and the resource tracker then prints
    "There appear to be N leaked semaphore objects" at exit. Every bar and line of ours is
    written by one process, so a thread lock is all that is needed.
    """
    from tqdm import tqdm

    global _LOCK_SET
    if not _LOCK_SET:
        tqdm.set_lock(threading.RLock())
        _LOCK_SET = True
    return tqdm


_LOCK_SET = False


class _BarSafeHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm_class().write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup(prefix: str) -> None:
    """Log INFO and above to stderr as ``<prefix> message``, unless a handler exists already."""
    if not logger.handlers:
        handler = _BarSafeHandler()
        handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


#: Log level of each ``verbosity`` (``quiet``: warnings and errors; ``verbose``: debug lines too,
#: e.g. one line per trial the pruner stopped).
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


def set_verbosity(verbosity: str) -> None:
    """Set the package logger's level for ``quiet`` / ``normal`` / ``verbose``."""
    logger.setLevel(LEVELS.get(verbosity, logging.INFO))

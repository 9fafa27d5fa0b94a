"""The package logger's one stderr handler (the launcher and the workers each set it up once).

Lines go through ``tqdm.write``: while the launcher's progress bar is shown, a log line is
printed above it instead of being appended to the bar's line.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("hparam_joblib")


class _BarSafeHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
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

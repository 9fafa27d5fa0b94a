"""The package logger's one stderr handler (the launcher and the workers each set it up once)."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("hparam_joblib")


def setup(prefix: str) -> None:
    """Log INFO and above to stderr as ``<prefix> message``, unless a handler exists already."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
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

"""The exception tree of hparam_joblib.

::

    HparamError                 anything the user can fix; the CLI prints it on one line, exit 2
    ├── UsageError              a bad command-line flag
    ├── MissingExtraError       an optional dependency is not installed (matplotlib, optuna-dashboard)
    ├── ConfigError             a bad YAML file or value (.path = file, .key = key path)
    │   └── OverrideError       a bad ``--set`` item (.text = the raw item)
    ├── StorageError            the study database cannot be used (.db = its path or URL)
    │   └── StorageBusyError    SQLite stayed locked past the retry bound (.attempts)
    ├── BackendError            the cluster cannot run the search (scheduler unreachable, no workers)
    ├── WorkerCrashError        ``max_worker_deaths`` workers died in a row without a finished trial
    ├── UpgradeError            an Optuna or SQLAlchemy outside the tested range (``_tested``), or one
    │                           that creates trials outside our budgeted path (``storage/_guard``)
    ├── OutsideSearchError      kept for code that catches it (also a RuntimeError); never raised now
    └── TrainingCodeError       the training function failed in every trial a run started with
                                (``max_trial_errors``); exit status 1, not 2

Everything else (a bug, an exception inside the user's training function) is not an
``HparamError``: training-function errors are recorded on the trial, never raised here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: ``scheme://user:password@`` in any text: the password part is replaced by ``***``.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)")


def redact_secrets(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***\3", text)


def one_line(err: BaseException, limit: int = 300) -> str:
    """``err``'s text on one line, cut to ``limit`` characters (``...`` marks a cut)."""
    text = " ".join(str(err).split())
    return text[:limit] + ("..." if len(text) > limit else "")


class HparamError(Exception):
    """Base class for every error the user can fix; printed as one line with exit status 2.

    Its text never shows a password: a storage URL given with ``--set`` may appear in it.
    """

    #: The exit status of a script stopped by this error.
    exit_status = 2

    def __str__(self) -> str:
        return redact_secrets(super().__str__())


class UsageError(HparamError):
    """A bad command-line flag or argument."""


class ConfigError(HparamError):
    """A bad configuration file or value.

    Args:
        path: the configuration file (or another origin such as ``--set``).
        key: dotted key path inside the configuration, or ``""`` for the whole file.
        message: what is wrong and what was expected.
    """

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(f"{where}{message}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled across processes (loky results)
        return (ConfigError, (self.path, self.key, self.message))


class OverrideError(ConfigError):
    """A ``--set`` item that cannot be parsed or applied.

    Args:
        text: the raw ``key=value`` text the user typed.
        message: what is wrong and what was expected.
    """

    def __init__(self, text: str, message: str) -> None:
        self.text = text
        super().__init__(f"--set {text!r}", "", message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (OverrideError, (self.text, self.message))


class StorageError(HparamError):
    """The study database cannot be opened, read or written.

    Args:
        db: the database path or redacted URL.
        message: what is wrong.
    """

    def __init__(self, db: str, message: str) -> None:
        self.db = db
        self.detail = message
        super().__init__(f"{db}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (StorageError, (self.db, self.detail))


class StorageBusyError(StorageError):
    """SQLite stayed locked by another connection past the retry bound.

    Args:
        db: the database path.
        attempts: how many attempts were made.
        holder: a description of what holds the lock, if known.
    """

    def __init__(self, db: str, attempts: int, holder: str) -> None:
        self.attempts = attempts
        self.holder = holder
        super().__init__(
            db,
            f"database is locked after {attempts} attempts; {holder}. "
            "Close the program that holds a write transaction on this file and run again.",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (StorageBusyError, (self.db, self.attempts, self.holder))


class TrainingCodeError(HparamError):
    """The first ``max_trial_errors`` trials of a run all failed by an error (broken code).

    Exit status 1: the input was fine, the training function is not. The message names the
    exception, the user's file and line, and where the full traceback is.
    """

    exit_status = 1

    def __init__(self, message: str, short: str = "") -> None:
        super().__init__(message)
        #: A few words for the reason of the trials the stop interrupted.
        self.short = short or message

    def __reduce__(self) -> tuple[Any, ...]:
        return (TrainingCodeError, (str(self), self.short))


class MissingExtraError(HparamError):
    """An optional dependency (matplotlib, optuna-dashboard) is not installed."""


class BackendError(HparamError):
    """The cluster cannot run the search (scheduler unreachable, no workers, ...)."""


class WorkerCrashError(HparamError):
    """``max_worker_deaths`` worker processes died in a row without a trial finishing."""


class UpgradeError(HparamError):
    """The installed Optuna or SQLAlchemy is outside the versions our internals were tested on,
    or it creates trials by a path that bypasses the budget: the search does not start (or stops)."""


class OutsideSearchError(HparamError, RuntimeError):
    """Kept for code that catches it: ``report()`` and ``current_trial_number()`` no longer raise
    it outside a search (they do nothing there)."""

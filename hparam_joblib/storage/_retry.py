"""How long to keep trying a storage call (:class:`RetryPolicy`), and which errors are transient:
SQLite's "database is locked", PostgreSQL's deadlocks, serialization failures and lost
connections, a schema-creation race between two launches.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from dataclasses import dataclass

logger = logging.getLogger("hparam_joblib")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a storage call that hits a SQLite lock.

    ``busy_timeout`` is SQLite's own wait inside one attempt; between attempts we back off
    exponentially with full jitter, up to ``deadline`` seconds in all.
    """

    deadline: float = 120.0
    busy_timeout: float = 10.0
    base_delay: float = 0.02
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        """Jittered exponential backoff before attempt ``attempt + 1``."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def causes(err: BaseException) -> list[BaseException]:
    """``err`` and what caused it (``__cause__``, else ``__context__``), outermost first."""
    out: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not c for c in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def is_lock_error(err: BaseException) -> bool:
    """True when SQLite's 'database is locked/busy' is anywhere in the cause chain.

    Optuna wraps it in ``StorageInternalError`` (whose message blames data length).
    """
    for current in causes(err):
        text = str(current).lower()
        if isinstance(current, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return True
        if type(current).__name__ == "OperationalError" and "database is locked" in text:
            return True
    return False


#: PostgreSQL SQLSTATEs after which the transaction was rolled back and may simply be re-run.
_PG_RETRY_CODES = {"40001": "serialization failure", "40P01": "deadlock detected"}


#: SQLSTATEs of a connection the server ended (the last commit's fate may be unknown).
_PG_CONNECTION_CODES = {
    "57P01": "the server ended the connection (admin shutdown)",
    "57P02": "the server crashed",
    "57P03": "the server is starting up or shutting down",
}


def server_transient(err: BaseException) -> str:
    """Why ``err`` is a transient server error worth retrying, or ''.

    ``rollback:...``: the server rolled the transaction back (deadlock, serialization
    failure): re-running it is safe. ``connection:...``: the connection broke; the last commit
    may or may not have happened (the callers make their writes safe to repeat).
    """
    for cause in causes(err):
        code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)  # psycopg2 | psycopg 3
        if code in _PG_RETRY_CODES:
            return f"rollback:{_PG_RETRY_CODES[code]}"
        if code in _PG_CONNECTION_CODES or (isinstance(code, str) and code.startswith("08")):
            return f"connection:{_PG_CONNECTION_CODES.get(code, 'connection failure')}"
        if getattr(cause, "connection_invalidated", False) or type(cause).__name__ == "PendingRollbackError":
            # PendingRollbackError: a session whose connection broke earlier, not yet rolled back.
            return "connection:the connection to the server was lost"
        name = type(cause).__name__
        module = type(cause).__module__
        if module.startswith("psycopg") and name in ("OperationalError", "InterfaceError") and code is None:
            text = " ".join(str(cause).split())[:200]
            return f"connection:{text}"
    return ""


def _is_setup_race(err: BaseException) -> bool:
    """A schema-creation error caused by another launch creating the same schema."""
    text = str(err).lower()
    return "already exists" in text or "unique constraint" in text or "integrityerror" in text



"""The one place that turns a ``storage:`` setting into a storage: used by the launcher, the
workers, ``--tune-n-jobs`` and the results CLI.

* ``sqlite`` (default): ``<save_db_directory>/<study>.db`` through :class:`SearchStorage`
  (WAL, flock-queued writers, BEGIN IMMEDIATE, lock retries).
* ``postgresql://...``: :class:`SearchStorage` on the server (no SQLite-only code: no flock,
  PRAGMA or BEGIN IMMEDIATE; the study row lock serialises trial creation), heartbeats.
* ``journal[:PATH]``: :class:`JournalSearchStorage` on Optuna's JournalFileBackend.

Pre-flight checks connect, read and compare, but never create anything: a bad URL, a wrong
password, a missing database or a direction that differs stop the search with one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hparam_joblib import _journal
from hparam_joblib._errors import StorageError
from hparam_joblib._storage import (
    CONNECT_TIMEOUT,
    RetryPolicy,
    SearchStorage,
    StorageLocation,
    StudyStore,
    check_directions,
    connect_args,
    driver_url,
    enable_wal,
)
from hparam_joblib._storage import preflight as sqlite_preflight

if TYPE_CHECKING:
    from hparam_joblib._config import SearchConfig

POSTGRESQL_INSTALL = "pip install \"hparam_joblib[postgresql]\""


def location_for(cfg: SearchConfig, save_dir: Path) -> StorageLocation:
    """Where ``cfg``'s study lives (files as absolute paths, so every worker agrees)."""
    spec = cfg.storage
    if spec.kind == "postgresql":
        return StorageLocation("postgresql", url=spec.url)
    if spec.kind == "journal":
        return StorageLocation("journal", path=str(spec.journal_path(save_dir, cfg.study_name)))
    return StorageLocation.sqlite(save_dir / f"{cfg.study_name}.db")


def open_storage(
    location: StorageLocation,
    *,
    budget: int | None = None,
    run_id: str = "",
    policy: RetryPolicy | None = None,
    create_tables: bool = False,
    heartbeat_interval: float | None = None,
    grace_period: float | None = None,
    heartbeat_stale_trial_callback: Any = None,
) -> StudyStore:
    """Open the storage of ``location`` in this process (the launcher creates the schema).
    Heartbeats are for servers only: on a file they are ignored."""
    if location.kind == "journal":
        return _journal.JournalSearchStorage(location, budget=budget, run_id=run_id, policy=policy)
    try:
        return SearchStorage(
            location, budget=budget, run_id=run_id, policy=policy, create_tables=create_tables,
            heartbeat_interval=heartbeat_interval if location.is_server else None,
            grace_period=grace_period if location.is_server else None,
            heartbeat_stale_trial_callback=heartbeat_stale_trial_callback if location.is_server else None,
        )
    except (StorageError, ValueError):  # ValueError: a bad heartbeat_interval or grace_period
        raise
    except ImportError as err:
        raise StorageError(location.display, f"needs the PostgreSQL driver ({err}): {POSTGRESQL_INSTALL}") from err
    except Exception as err:
        if not location.is_server:
            raise
        raise StorageError(location.display, server_problem(err)) from err


def preflight(location: StorageLocation, study_name: str, directions: Sequence[str]) -> bool:
    """Check the storage without creating anything; True when the study already exists.

    Raises:
        StorageError: one line naming the storage (password hidden) and what is wrong.
    """
    if location.kind == "sqlite":
        return sqlite_preflight(Path(location.path), study_name, list(directions))
    if location.kind == "journal":
        return _journal.preflight(Path(location.path), study_name, list(directions))
    return _server_preflight(location, study_name, list(directions))


def prepare(location: StorageLocation, policy: RetryPolicy) -> None:
    """Create what a file storage needs (its directory; WAL for SQLite); nothing for a server."""
    if location.is_server:
        return
    path = Path(location.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(str(path.parent), f"cannot create the directory ({err.strerror})") from err
    if location.kind == "sqlite":
        enable_wal(path, policy)


def server_engine(url: str, read_only: bool = False) -> Any:
    """A pool-less SQLAlchemy engine for a one-off check."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(driver_url(url), poolclass=NullPool, connect_args=connect_args(url, read_only))


_PROBLEMS: tuple[tuple[str, str], ...] = (
    (r"password authentication failed for user \"?([^\"\s]+)", "authentication failed for user '{0}' (check the password in the URL or PGPASSWORD)"),
    (r"no password supplied", "the server asks for a password: set PGPASSWORD (or put it in the URL)"),
    (r"database \"([^\"]+)\" does not exist", "database '{0}' does not exist on the server (create it first, e.g. createdb {0})"),
    (r"role \"([^\"]+)\" does not exist", "user '{0}' does not exist on the server"),
    (r"could not translate host name \"?([^\"\s]+)", "cannot resolve host '{0}'"),
    (r"timeout expired", f"cannot reach the server (no answer within {CONNECT_TIMEOUT} s)"),
    (r"Connection refused", "cannot reach the server (connection refused: is PostgreSQL running on that host and port?)"),
    (r"No route to host|Network is unreachable", "cannot reach the server (no route to host)"),
    (r"received invalid response to SSL negotiation|server closed the connection unexpectedly",
     "the server at that host and port did not answer like PostgreSQL (wrong port, or a proxy in between?)"),
)


def server_problem(err: BaseException) -> str:
    """One line saying what is wrong with a server connection (never the password)."""
    cause: BaseException = err
    orig = getattr(err, "orig", None)
    if isinstance(orig, BaseException):
        cause = orig
    text = " ".join(str(cause).split())
    for pattern, message in _PROBLEMS:
        match = re.search(pattern, text)
        if match:
            return message.format(*match.groups())
    if isinstance(cause, ImportError) or type(err).__name__ == "NoSuchModuleError":
        return f"the PostgreSQL driver is not installed: {POSTGRESQL_INSTALL}"
    return f"cannot use the database ({type(cause).__name__}: {text[:300]})"


def _server_preflight(location: StorageLocation, study_name: str, directions: list[str]) -> bool:
    """Connect read-only, check the schema and the study's directions; create nothing."""
    import sqlalchemy

    shown = location.display
    try:
        engine = server_engine(location.url, read_only=True)
    except Exception as err:
        raise StorageError(shown, server_problem(err)) from err
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            if "studies" not in tables:
                return False
            rows = conn.execute(
                sqlalchemy.text(
                    "SELECT d.direction FROM studies s JOIN study_directions d ON d.study_id = s.study_id "
                    "WHERE s.study_name = :name ORDER BY d.objective"
                ),
                {"name": study_name},
            ).all()
    except Exception as err:
        raise StorageError(shown, server_problem(err)) from err
    finally:
        engine.dispose()
    if not rows:
        return False
    check_directions(shown, study_name, [str(r[0]).lower().rsplit(".", 1)[-1] for r in rows], directions)
    return True


def load_study_readonly(location: StorageLocation, study_name: str) -> Any:
    """``optuna.load_study`` on ``location`` without creating or writing anything."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage: Any
    if location.kind == "journal":
        storage = _journal.read_only_storage(Path(location.path))
    elif location.kind == "postgresql":
        storage = optuna.storages.RDBStorage(
            driver_url(location.url), engine_kwargs={"connect_args": connect_args(location.url, read_only=True)},
            skip_table_creation=True, skip_compatibility_check=True,
        )
    else:
        storage = f"sqlite:///{location.path}"
    return optuna.load_study(study_name=study_name, storage=storage)


def dashboard_command(location: StorageLocation) -> str:
    """The optuna-dashboard command for the storage (relative file paths under the cwd)."""
    if location.is_server:
        return f"optuna-dashboard {location.public_url}"
    rel = os.path.relpath(location.path)
    shown = location.path if rel.startswith("..") else rel
    return f"optuna-dashboard {shown}" if location.kind == "journal" else f"optuna-dashboard sqlite:///{shown}"


__all__ = [
    "connect_args", "dashboard_command", "load_study_readonly", "location_for", "open_storage",
    "preflight", "prepare", "server_engine", "server_problem",
]

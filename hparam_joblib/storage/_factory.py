"""The one place that turns a location into a storage and branches on its kind: open (launcher
and workers), pre-flight (create nothing), prepare (directory, WAL); read-only: the location a
results command names, the studies in it, a study loaded; why trials failed, from any storage.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hparam_joblib._errors import StorageError, UsageError

if TYPE_CHECKING:
    from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.storage import _journal
from hparam_joblib.storage._base import StudyStore
from hparam_joblib.storage._failure_rows import FAILED_STATES, FailureRow, failure_rows
from hparam_joblib.storage._location import StorageLocation, parse_storage
from hparam_joblib.storage._netfs import network_mount
from hparam_joblib.storage._postgresql import (
    POSTGRESQL_INSTALL,
    _server_preflight,
    connect_args,
    driver_url,
    server_problem,
    server_studies,
)
from hparam_joblib.storage._rdb import SearchStorage
from hparam_joblib.storage._retry import RetryPolicy
from hparam_joblib.storage._sqlite import enable_wal, sqlite_file_kind, sqlite_preflight, sqlite_studies

logger = logging.getLogger("hparam_joblib")


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


def preflight(
    location: StorageLocation, study_name: str, directions: Sequence[str], allow_network_filesystem: bool = False,
) -> bool:
    """Check the storage without creating anything; True when the study already exists.

    Raises:
        StorageError: one line naming the storage (password hidden) and what is wrong; a file
            on a network filesystem unless ``allow_network_filesystem``.
    """
    if not location.is_server:
        _check_local_filesystem(Path(location.path), allow_network_filesystem)
    if location.kind == "sqlite":
        return sqlite_preflight(Path(location.path), study_name, list(directions))
    if location.kind == "journal":
        return _journal.preflight(Path(location.path), study_name, list(directions))
    return _server_preflight(location, study_name, list(directions))


def _check_local_filesystem(path: Path, allowed: bool) -> None:
    """Refuse a study file on a network filesystem (``_netfs``), or warn once when allowed."""
    mount = network_mount(path)
    if mount is None:
        return
    if allowed:
        logger.warning("warning: %s is on a network filesystem, %s; allow_network_filesystem is true: "
                       "run this search from one machine only", path, mount.describe())
        return
    raise StorageError(str(path), (
        f"is on a network filesystem, {mount.describe()}: SQLite's and flock's locks may not hold there, and "
        "machines writing one file can corrupt it. Put save_db_directory on a local disk for a search on one "
        "machine, or use storage: postgresql://... for several (docs/clusters.md); "
        "allow_network_filesystem: true goes on anyway, from one machine only"
    ))


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


_SERVER_SCHEMES = ("postgresql", "postgres")


def readonly_location(target: str | StorageLocation) -> tuple[StorageLocation, str]:
    """The storage to read, and how errors name it. ``target``: a results command's DB text (a
    ``postgresql://`` URL, ``journal:PATH``, a ``sqlite:///`` URL or a file: SQLite, else a
    journal file), or a config's location (its SQLite file is checked the same way).

    Raises:
        UsageError: a server URL that is not valid.
        StorageError: no such file, a directory, neither SQLite nor a journal file, unreadable.
    """
    if isinstance(target, StorageLocation):
        if target.kind == "sqlite":
            return _file_location(target.path, Path(target.path)), target.path
        return target, target.label
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if scheme.split("+", 1)[0] in _SERVER_SCHEMES:
        spec = parse_storage(target)
        if isinstance(spec, str):
            raise UsageError(f"DB: {spec}")
        location = StorageLocation("postgresql", url=spec.url)
        return location, location.display
    if target.startswith("journal:"):
        return StorageLocation("journal", path=str(Path(target.removeprefix("journal:")).resolve())), target
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
    return _file_location(target, Path(target.removeprefix("sqlite:///"))), target


def _file_location(where: str, path: Path) -> StorageLocation:
    """A study file to read: SQLite, or a journal file when SQLite refuses it."""
    if not path.exists():
        raise StorageError(where, "no such file")
    if path.is_dir():
        raise StorageError(where, "is a directory, not a database file")
    # Not read with open(): closing it would drop this process's SQLite locks on the file
    # (sqlite_file_kind); only a file that is not SQLite is read as a journal.
    try:
        empty = path.stat().st_size == 0
        kind = "other" if empty else sqlite_file_kind(path)
    except (OSError, sqlite3.Error) as err:
        raise StorageError(where, f"cannot read the file ({getattr(err, 'strerror', None) or err})") from err
    if kind == "other":
        if not empty and _journal.is_journal_file(path):
            return StorageLocation("journal", path=str(path.resolve()))
        raise StorageError(where, "is not a SQLite database (expected a study .db file written by a search)")
    return StorageLocation.sqlite(path)


def readonly_studies(location: StorageLocation, where: str) -> tuple[tuple[str, ...], str]:
    """The names of the studies in ``location``, read without writing anything, and for SQLite
    the read-only URI that read them (:func:`open_study_readonly` loads through it).

    Raises:
        StorageError: unreadable, or no Optuna schema (names ``where``).
    """
    if location.kind == "postgresql":
        return server_studies(location), ""
    if location.kind == "journal":
        return _journal.journal_studies(where, Path(location.path)), ""
    return sqlite_studies(where, Path(location.path))


@contextlib.contextmanager
def open_study_readonly(location: StorageLocation, study_name: str, sqlite_uri: str = "") -> Iterator[Any]:
    """``optuna.load_study`` on ``location`` without creating or writing anything; a SQLite file
    through ``sqlite_uri`` when given (a ``mode=ro`` URI from :func:`readonly_studies`).

    The study is usable inside the ``with`` block; its database connections are closed after it.
    """
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
        engine_kwargs: dict[str, Any] = {}
        if sqlite_uri:
            engine_kwargs["creator"] = functools.partial(
                sqlite3.connect, sqlite_uri, uri=True, timeout=10, check_same_thread=False
            )
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{location.path}", engine_kwargs=engine_kwargs, skip_table_creation=True
        )
    try:
        yield optuna.load_study(study_name=study_name, storage=storage)
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def failure_attrs(storage: Any, study_id: int, keys: Sequence[str]) -> list[FailureRow]:
    """``(number, state name, {key: value})`` of every PRUNED or FAIL trial, only the user attrs
    ``keys``: our storages answer with their own query (one SQL query on an RDB), any other (a
    plain Optuna storage) from its trials."""
    if isinstance(storage, (SearchStorage, _journal.JournalSearchStorage)):
        return storage.failure_attrs(study_id, keys)
    return failure_rows(storage.get_all_trials(study_id, deepcopy=False, states=FAILED_STATES), keys)

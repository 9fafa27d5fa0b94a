"""Reading a study without writing anything (the results CLI, ``--best``): the database a
command names (:class:`Database`), a study loaded from it, the heartbeats of its running trials.

The kind of storage is decided in ``_factory``; nothing here creates a file, a table or a row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from hparam_joblib._errors import StorageError, one_line
from hparam_joblib.storage._factory import open_study_readonly, readonly_location, readonly_studies
from hparam_joblib.storage._location import StorageLocation
from hparam_joblib.storage._postgresql import heartbeat_ages as server_heartbeat_ages

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Database:
    """A study database checked to hold Optuna studies: a SQLite file, a journal file or a
    PostgreSQL database (``location``; its URL may hold a password).

    Attributes:
        location: where the studies are.
        studies: their names, in creation order.
        uri: for a SQLite file, the read-only URI that read it (``mode=ro``, or ``immutable=1``
            in a read-only directory); empty otherwise.
    """

    location: StorageLocation
    studies: tuple[str, ...]
    uri: str = ""

    @property
    def shown(self) -> str:
        """How the database is named in output: the file, or the URL with ``***`` for a password."""
        return self.location.display


def open_database(target: str | StorageLocation) -> Database:
    """Check that ``target`` (a results command's DB text, or a config's location) names a
    SQLite file, a journal file or a ``postgresql://`` database with Optuna studies; create
    nothing.

    Raises:
        UsageError: a server URL that is not valid.
        StorageError: no such file, a directory, not SQLite, unreadable, or no study in it; a
            server that cannot be reached or refuses the credentials.
    """
    location, where = readonly_location(target)
    studies, uri = readonly_studies(location, where)
    if not studies:
        raise StorageError(where, "holds no study (the search never created one)")
    return Database(location=location, studies=studies, uri=uri)


@contextlib.contextmanager
def reading_study(db: Database, name: str) -> Iterator[None]:
    """Turn Optuna / SQLAlchemy / sqlite3 failures while reading study ``name`` into ``StorageError``."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as err:  # e.g. a schema from another Optuna version
        raise StorageError(db.shown, f"Optuna cannot load study {name!r} ({one_line(err)})") from err
    except Exception as err:
        if type(err).__module__.split(".")[0] in ("sqlalchemy", "sqlite3"):
            raise StorageError(db.shown, f"cannot read study {name!r} ({one_line(err)})") from err
        raise


def load_study(db: Database, name: str, resources: contextlib.ExitStack) -> optuna.Study:
    """Load one study through Optuna on a read-only connection, closed when ``resources`` is.

    Raises:
        StorageError: Optuna cannot read it (e.g. a schema from another Optuna version).
    """
    with reading_study(db, name):
        return cast("optuna.Study", resources.enter_context(open_study_readonly(db.location, name, sqlite_uri=db.uri)))


def heartbeat_ages(db: Database, study_name: str) -> dict[int, float] | None:
    """Seconds since the last heartbeat of each RUNNING trial, by number (server clock); None
    for a file (no heartbeats there).

    Raises:
        StorageError: the server cannot be used.
    """
    if not db.location.is_server:
        return None
    return server_heartbeat_ages(db.location, study_name)

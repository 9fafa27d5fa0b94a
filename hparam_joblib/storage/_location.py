"""What the ``storage:`` key means (:class:`StorageSpec`, parsing only) and where a study lives
(:class:`StorageLocation`, small and picklable: workers open their own storage from it); the
checks the pre-flights share (the stored directions; the directory of a study file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hparam_joblib._errors import StorageError

logger = logging.getLogger("hparam_joblib")


StorageKind = Literal["sqlite", "postgresql", "journal"]


#: Accepted spellings of the default (one SQLite file in ``save_db_directory``).
_DEFAULT_WORDS = ("sqlite", "default")


_PG_DRIVERS = ("postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+pg8000")


@dataclass(frozen=True)
class StorageSpec:
    """A validated ``storage:`` value.

    Attributes:
        kind: ``sqlite`` (the default file), ``postgresql`` or ``journal``.
        url: the SQLAlchemy URL for ``postgresql`` (password included: never print it).
        path: the journal file for ``journal``; ``None`` means ``<save_db_directory>/<study>.journal``.
    """

    kind: StorageKind = "sqlite"
    url: str = field(default="", repr=False)
    path: str | None = None

    @property
    def display(self) -> str:
        """How the storage is shown to the user: never with a password."""
        if self.kind == "postgresql":
            return redact_url(self.url)
        if self.kind == "journal":
            return f"journal:{self.path}" if self.path else "journal"
        return "sqlite"

    def journal_path(self, save_dir: Path, study_name: str) -> Path:
        """The journal file of a ``journal`` storage (absolute, so workers agree)."""
        return Path(self.path).expanduser().resolve() if self.path else (save_dir / f"{study_name}.journal").resolve()


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; unparsable text is hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<unparsable storage URL>"
    return parsed.render_as_string(hide_password=True)


def parse_storage(value: object) -> StorageSpec | str:
    """A :class:`StorageSpec`, or the reason ``value`` is not one (for a one-line error)."""
    if value is None:
        return StorageSpec()
    if not isinstance(value, str) or not value.strip():
        return f"must be 'sqlite', a postgresql:// URL or journal:PATH, got {value!r}"
    text = value.strip()
    if text.lower() in _DEFAULT_WORDS:
        return StorageSpec()
    if text == "journal" or text.startswith("journal:"):
        path = text[len("journal:"):].strip() if text.startswith("journal:") else ""
        return StorageSpec(kind="journal", path=path or None)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "postgres":
        return "postgres:// is not a SQLAlchemy URL; write postgresql://user@host:5432/dbname"
    if scheme in _PG_DRIVERS:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(text)
        except (ArgumentError, ValueError):
            return "is not a valid postgresql:// URL (expected postgresql://user[:password]@host[:port]/dbname)"
        if not parsed.database:
            return f"{redact_url(text)} names no database (expected postgresql://user@host:5432/dbname)"
        return StorageSpec(kind="postgresql", url=text)
    if scheme.startswith("sqlite"):
        return "sqlite URLs are not taken: the SQLite file is <save_db_directory>/<experiment_name>_<tag>.db (leave storage unset)"
    if scheme:
        return f"unsupported storage scheme {scheme!r}; use 'sqlite', postgresql://... or journal:PATH"
    return f"must be 'sqlite', a postgresql:// URL or journal:PATH, got {text!r}"


@dataclass(frozen=True)
class StorageLocation:
    """Where a study lives; small and picklable (workers open their own storage from it).

    Attributes:
        kind: ``sqlite``, ``postgresql`` or ``journal``.
        path: the SQLite file or the journal file (absolute); empty for a server.
        url: the server's SQLAlchemy URL, password included: never shown (see :attr:`display`).
    """

    kind: Literal["sqlite", "postgresql", "journal"]
    path: str = ""
    url: str = field(default="", repr=False)

    @classmethod
    def sqlite(cls, path: Path) -> StorageLocation:
        return cls("sqlite", path=str(Path(path).resolve()))

    @property
    def is_server(self) -> bool:
        """True for a database server other machines may share (heartbeats, no flock)."""
        return self.kind == "postgresql"

    @property
    def display(self) -> str:
        """How the storage is shown: the file, or the URL with its password as ``***``."""
        if self.kind == "postgresql":
            return redact_url(self.url)
        return self.path

    @property
    def label(self) -> str:
        """The storage as named in the summary and ``--dry-run``: the SQLite file,
        ``journal:FILE``, or the server URL with its password as ``***``."""
        return f"journal:{self.path}" if self.kind == "journal" else self.display

    @property
    def public_url(self) -> str:
        """What Optuna tools take without a secret: ``sqlite:///FILE``, the journal file, or the
        server URL without its password (libpq then reads PGPASSWORD or ~/.pgpass)."""
        if self.kind == "postgresql":
            from sqlalchemy.engine import URL, make_url

            from hparam_joblib.storage._postgresql import driver_url

            try:
                url = make_url(driver_url(self.url))
                # URL.create, not URL.set: set() reads password=None as "keep it".
                return URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                                  url.query).render_as_string(hide_password=False)
            except Exception:  # noqa: BLE001 - never echo an unparsable URL
                return redact_url(self.url)
        if self.kind == "journal":
            return self.path
        return sqlite_url(Path(self.path))

    @property
    def password(self) -> str | None:
        """The server password written in the URL, if any: tools get it by the environment
        (``PGPASSWORD``), never on a command line."""
        if not self.is_server:
            return None
        from sqlalchemy.engine import make_url

        password = make_url(self.url).password
        return str(password) if password else None

    def __str__(self) -> str:
        return self.display


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (absolute, so workers agree on it)."""
    return f"sqlite:///{path.resolve()}"


def check_directions(where: str, study_name: str, stored: Sequence[str], expected: Sequence[str]) -> None:
    """Refuse a config whose directions differ from the stored study's (one line, names ``where``).

    Raises:
        StorageError: the directions differ.
    """
    if list(stored) == list(expected):
        return

    def shown(dirs: Sequence[str]) -> str:
        return f"direction {dirs[0]!r}" if len(dirs) == 1 else f"directions {list(dirs)}"

    raise StorageError(
        where,
        f"study {study_name!r} was created with {shown(stored)}, "
        f"but the config says {shown(expected)}; use another tag for a new study",
    )




def check_directory(where: str, directory: Path, label: str) -> None:
    """Refuse a study file's ``directory`` when its nearest existing part is a file or is not
    writable; ``label`` names it in the message (e.g. ``save directory``).

    Raises:
        StorageError: one line naming ``where``.
    """
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(where, f"{probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(where, f"{label} is not writable ({probe})")

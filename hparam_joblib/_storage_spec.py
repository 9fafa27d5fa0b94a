"""What the ``storage:`` key means: the default SQLite file, a PostgreSQL URL, or a journal file.

Parsing only (no connection, no file touched). A password in a URL is kept for connecting and
never shown: :attr:`StorageSpec.display` is the URL with the password replaced by ``***``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

    @property
    def is_rdb_server(self) -> bool:
        """True for a database server shared across machines (heartbeats needed)."""
        return self.kind == "postgresql"

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

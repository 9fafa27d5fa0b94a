"""The schema of an RDB study: Optuna's version manager built only when used (a worker's) or
replaced by two plain reads (the launcher's, on a schema at this Optuna's head), a new schema
stamped as alembic would, and our extra index.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb import storage as _rdb_storage
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy import text

logger = logging.getLogger("hparam_joblib")

_REAL_VERSION_MANAGER = _rdb_storage._VersionManager
_VERSION_MANAGER_SWAP = threading.Lock()

#: Index ``trials(study_id, state)``: the budget count runs inside the write lock on every trial
#: creation. An extra index is invisible to Optuna and optuna-dashboard.
BUDGET_INDEX_DDL = "CREATE INDEX IF NOT EXISTS ix_hparam_joblib_trials_study_state ON trials (study_id, state)"


class LazyVersionManager:
    """Optuna's ``_VersionManager``, built on the first use of any of its attributes.

    Its constructor imports alembic and reads the version tables; a storage opened with
    ``skip_table_creation`` and ``skip_compatibility_check`` on a schema that exists (a worker's)
    only needs it for ``upgrade()`` / ``get_current_version()``, which build it then.
    """

    def __init__(self, url: str, engine: Any, scoped_session: Any) -> None:
        self._args = (url, engine, scoped_session)
        self._real: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            self._real = _REAL_VERSION_MANAGER(*self._args)
        return getattr(self._real, name)


class CheckedVersionManager(LazyVersionManager):
    """The launcher's: a schema already stamped with this Optuna's head revision passes the
    compatibility check with two plain reads (no alembic: 0.17 s off every launch's critical
    path); a schema just created is stamped the same way alembic's ``stamp`` would (one table, one
    row). Anything else (an old schema, an unexpected layout) builds Optuna's own manager at once,
    which stamps, or raises its message naming ``optuna storage upgrade``."""

    def __init__(self, url: str, engine: Any, scoped_session: Any) -> None:
        super().__init__(url, engine, scoped_session)
        if not (stamped_head(engine) or stamp_new_schema(engine)):
            self._real = _REAL_VERSION_MANAGER(*self._args)

    def check_table_schema_compatibility(self) -> None:
        if self._real is None:
            return  # stamped with the head revision: what Optuna's check compares
        self._real.check_table_schema_compatibility()


_HEAD: list[str | None] = []


def alembic_head() -> str | None:
    """The head revision of Optuna's migrations, read from its version scripts' ``revision`` /
    ``down_revision`` lines (what alembic's ScriptDirectory computes), or None if unclear."""
    if not _HEAD:
        versions = Path(_rdb_storage.__file__).parent / "alembic" / "versions"
        revisions: set[str] = set()
        downs: set[str] = set()
        try:
            for script in versions.glob("*.py"):
                source = script.read_text(encoding="utf-8")
                rev = re.search(r'^revision\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
                down = re.search(r'^down_revision\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
                if rev:
                    revisions.add(rev.group(1))
                if down:
                    downs.add(down.group(1))
        except OSError:
            revisions = set()
        heads = revisions - downs
        _HEAD.append(heads.pop() if len(heads) == 1 else None)
    return _HEAD[0]


def stamped_head(engine: Any) -> str | None:
    """The schema's alembic revision when it is this Optuna's head and the version row exists."""
    head = alembic_head()
    if head is None:
        return None
    try:
        with engine.connect() as conn:
            current = [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]
            info = conn.execute(text("SELECT COUNT(*) FROM version_info")).scalar()
    except sqlalchemy_exc.SQLAlchemyError:
        return None  # no such table yet (a new file): Optuna's manager creates and stamps
    return head if current == [head] and info else None


def stamp_new_schema(engine: Any) -> bool:
    """Write the version rows of a schema that ``create_all`` just made (no version row, no
    ``alembic_version`` table), as Optuna's manager does: ``version_info`` with this Optuna's
    schema and library version, and ``alembic_version`` at the head revision (alembic's own
    table layout). False, touching nothing, for any other state."""
    head = alembic_head()
    if head is None:
        return False
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT COUNT(*) FROM version_info")).scalar():
                return False
            if "alembic_version" in sqlalchemy_inspect(conn).get_table_names():
                return False
            conn.execute(
                text("INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, :s, :v)"),
                {"s": models.SCHEMA_VERSION, "v": optuna.__version__},
            )
            conn.execute(text(
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            ))
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:h)"), {"h": head})
    except sqlalchemy_exc.SQLAlchemyError as err:  # a concurrent creator won, or a layout we do not know
        logger.debug("version rows not written here (%s); Optuna's manager checks the schema", err)
        return False
    return True


def with_version_manager(init: Callable[[], None], manager: type[LazyVersionManager]) -> None:
    """Run ``init`` (``RDBStorage.__init__``) with ``manager`` in place of Optuna's
    ``_VersionManager`` (a module global it looks up; swapped under a lock and always restored)."""
    with _VERSION_MANAGER_SWAP:
        _rdb_storage._VersionManager = manager  # type: ignore[misc,assignment]
        try:
            init()
        finally:
            _rdb_storage._VersionManager = _REAL_VERSION_MANAGER  # type: ignore[misc]


def create_budget_index(engine: Any) -> None:
    """Create the ``trials(study_id, state)`` index if it is missing (see ``BUDGET_INDEX_DDL``)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(BUDGET_INDEX_DDL)

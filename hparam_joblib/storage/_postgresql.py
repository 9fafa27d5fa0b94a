"""The PostgreSQL server's specifics: the driver in the URL, connect options, one-off engines,
readable connection errors; read-only: the pre-flight, the study names, the heartbeats' ages.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any

from hparam_joblib._errors import StorageError
from hparam_joblib.storage._location import StorageLocation, check_directions

logger = logging.getLogger("hparam_joblib")


#: Seconds a connection attempt to a database server may take before it is an error.
CONNECT_TIMEOUT = 10


@functools.cache
def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


#: The drivers we install or accept for a bare ``postgresql://``, in the order we pick them:
#: psycopg 3 (the ``postgresql`` extra; SQLAlchemy 2.1's default), then psycopg2.
DRIVERS: tuple[tuple[str, str], ...] = (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2"))


def driver_url(url: str) -> str:
    """``url`` with an installed driver named. A bare ``postgresql://`` means psycopg2 to
    SQLAlchemy 2.0 and psycopg 3 to 2.1, so the URL names the one installed (psycopg 3 first):
    the search, the workers and the printed dashboard command then use the same driver, whichever
    SQLAlchemy is installed. A URL that names a driver is kept as written."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() == "postgresql":
        for module, named in DRIVERS:
            if _installed(module):
                return f"{named}://{rest}"
    return url


def connect_args(url: str, read_only: bool = False) -> dict[str, Any]:
    """Driver options for a server: a bounded connect timeout, and read-only sessions."""
    if "+pg8000" in url.split("://", 1)[0]:
        return {"timeout": CONNECT_TIMEOUT}
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "hparam_joblib"}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    return args


class _DropReconnectNoise(logging.Filter):
    """Optuna logs a warning with the whole SQL text when a trials query fails, then retries it
    on the same broken connection; our retry reconnects and says nothing. Drop that warning
    when the cause is a lost server connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Caught an error from sqlalchemy") and (
            "server closed the connection" in text or "terminating connection" in text
            or "connection already closed" in text
        ))


_RECONNECT_FILTER = _DropReconnectNoise()


#: Seconds a pooled connection may have been idle before it is pinged when taken from the pool.
IDLE_PING_S = 1.0


def ping_when_idle(engine: Any) -> None:
    """Ping a pooled connection before use only when it sat idle for ``IDLE_PING_S``: a server
    restart or an idle timeout during a long trial closed it, and it is replaced before the
    trial's writes. SQLAlchemy's ``pool_pre_ping`` pings at every checkout: 9 of ~62 statements
    and round trips per trial went to it. A connection that broke anyway fails its statement,
    which the caller's retry runs again on a new one."""
    from sqlalchemy import event, exc

    def checkin(dbapi_conn: Any, record: Any) -> None:
        record.info["hparam_joblib_idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("hparam_joblib_idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:
            if engine.dialect.is_disconnect(err, dbapi_conn, None):
                raise exc.DisconnectionError(str(err)) from err  # the pool reconnects
            raise

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


POSTGRESQL_INSTALL = "pip install \"hparam_joblib[postgresql]\""


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




def server_studies(location: StorageLocation) -> tuple[str, ...]:
    """The names of the studies in a server's database, read on a read-only connection.

    Raises:
        StorageError: no Optuna schema, or the server cannot be used (one line, no password).
    """
    import sqlalchemy

    shown = location.display
    try:
        engine = server_engine(location.url, read_only=True)
        try:
            with engine.connect() as conn:
                if "studies" not in set(sqlalchemy.inspect(conn).get_table_names()):
                    raise StorageError(shown, "holds no Optuna study (no 'studies' table)")
                return tuple(r[0] for r in conn.execute(
                    sqlalchemy.text("SELECT study_name FROM studies ORDER BY study_id")
                ))
        finally:
            engine.dispose()
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(shown, server_problem(err)) from err


def heartbeat_ages(location: StorageLocation, study_name: str) -> dict[int, float]:
    """Seconds since the last heartbeat of each RUNNING trial, by number (server clock).

    Raises:
        StorageError: the server cannot be used.
    """
    import sqlalchemy

    engine = server_engine(location.url, read_only=True)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text(
                "SELECT t.number, EXTRACT(EPOCH FROM (LOCALTIMESTAMP - h.heartbeat)) "
                "FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                "WHERE s.study_name = :name AND t.state = 'RUNNING'"
            ), {"name": study_name}).all()
    except Exception as err:
        raise StorageError(location.display, server_problem(err)) from err
    finally:
        engine.dispose()
    return {int(number): max(0.0, float(age)) for number, age in rows}

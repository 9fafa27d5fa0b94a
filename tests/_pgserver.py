"""A throwaway PostgreSQL server for the tests, started once per test session on a private port
and directory by ``scripts/pg_throwaway.sh`` (the one starter: ``.ci/run`` and
``tests/optuna_suite/run.py`` use it too), removed at the end.

* ``postgres_server`` (session): the server's base URL. ``HPARAM_JOBLIB_TEST_PG_URL`` points the
  tests at an existing server instead (a database per test is created in it).
* ``pg_url`` (function): a fresh, empty database on that server, dropped after the test.
* :func:`start_server` / :func:`stop_server`, :func:`create_database` / :func:`drop_database`:
  the same steps for ``tests/optuna_suite`` (which loads this file by its path).

Without PostgreSQL binaries the tests that need it are skipped, unless
``HPARAM_JOBLIB_REQUIRE_PG=1`` (set by ``.ci/run``, which installs the server): then they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Starts and stops the server (installs Debian's package when missing, as root with apt).
STARTER = Path(__file__).resolve().parents[1] / "scripts" / "pg_throwaway.sh"


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (the newest version's), or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return Path(dirs[-1]) if dirs else None


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(root: Path, port: int) -> str:
    """Start a server with its files in ``root`` on ``port``; returns its base URL
    (``postgresql://postgres@127.0.0.1:PORT``).

    Raises:
        RuntimeError: it did not start (the message ends with its log), ``root`` removed.
    """
    started = subprocess.run(["bash", str(STARTER), "start", str(root), str(port)],
                             check=False, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        log = root / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else started.stderr[-2000:]
        stop_server(root)
        raise RuntimeError(f"could not start PostgreSQL: {tail}")
    return started.stdout.strip().split("=", 1)[1]


def stop_server(root: Path) -> None:
    """Stop the server started in ``root`` and remove its files."""
    subprocess.run(["bash", str(STARTER), "stop", str(root)], check=False, capture_output=True, timeout=90)


def _unavailable(why: str) -> None:
    if os.environ.get("HPARAM_JOBLIB_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required (HPARAM_JOBLIB_REQUIRE_PG=1) but {why}")
    pytest.skip(f"no PostgreSQL server for the tests: {why}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    external = os.environ.get("HPARAM_JOBLIB_TEST_PG_URL")
    if external:
        yield external.rstrip("/")
        return
    if bin_dir() is None:
        _unavailable("initdb/pg_ctl not found (apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install -e '.[postgresql]')")
    root = Path(tempfile.mkdtemp(prefix="hj-pg-"))
    try:
        url = start_server(root, free_port())
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield url
    finally:
        stop_server(root)


def _admin(base: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{base}/postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database(base: str, prefix: str = "t") -> str:
    """A fresh empty database on the server at ``base``: ``<base>/<prefix>_<hex>``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin(base, f"CREATE DATABASE {name}")
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (its connections ended first)."""
    base, name = url.rsplit("/", 1)
    for attempt in range(3):
        try:
            _admin(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except Exception:  # noqa: BLE001 - a straggling connection: try again shortly
            time.sleep(1 + attempt)


@pytest.fixture()
def pg_url(postgres_server: str) -> Iterator[str]:
    """A fresh empty database for one test: ``postgresql://postgres@127.0.0.1:PORT/t_<hex>``."""
    url = create_database(postgres_server)
    try:
        yield url
    finally:
        drop_database(url)

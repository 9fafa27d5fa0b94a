"""A throwaway PostgreSQL server for the tests: started once per test session with the
machine's own ``initdb``/``pg_ctl`` on a private port and socket directory, removed at the end.

* ``postgres_server`` (session): the server's base URL. ``HPARAM_JOBLIB_TEST_PG_URL`` points the
  tests at an existing server instead (a database per test is created in it).
* ``pg_url`` (function): a fresh, empty database on that server, dropped after the test.

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


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return Path(dirs[-1]) if dirs else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(why: str) -> None:
    if os.environ.get("HPARAM_JOBLIB_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required (HPARAM_JOBLIB_REQUIRE_PG=1) but {why}")
    pytest.skip(f"no PostgreSQL server for the tests: {why}")


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    external = os.environ.get("HPARAM_JOBLIB_TEST_PG_URL")
    if external:
        yield external.rstrip("/")
        return
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable("initdb/pg_ctl not found (apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install -e '.[postgresql]')")
    root = Path(tempfile.mkdtemp(prefix="hj-pg-"))
    data, log = root / "data", root / "server.log"
    port = _free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    os.chmod(root, 0o755)
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
        check=True, capture_output=True, timeout=120,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off"
    started = subprocess.run(
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"]),
        capture_output=True, text=True, timeout=90,
    )
    if started.returncode != 0:
        tail = log.read_text()[-2000:] if log.exists() else started.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {tail}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True, timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _admin(base: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{base}/postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture()
def pg_url(postgres_server: str) -> Iterator[str]:
    """A fresh empty database for one test: ``postgresql://postgres@127.0.0.1:PORT/t_<hex>``."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(postgres_server, f"CREATE DATABASE {name}")
    try:
        yield f"{postgres_server}/{name}"
    finally:
        for attempt in range(3):
            try:
                _admin(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                break
            except Exception:  # a straggling connection: try again shortly
                time.sleep(1 + attempt)

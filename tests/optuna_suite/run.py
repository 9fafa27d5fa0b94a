"""Run Optuna's own ``tests/storages_tests`` against our storages (``make optuna-storage-tests``).

1. Fetch the sdist of the installed Optuna (``pip download --no-binary :all: --no-deps
   optuna==<installed>``) into a cache outside the repository (``$HPARAM_JOBLIB_CACHE``, default
   ``~/.cache/hparam_joblib``), once per version; its ``tests/`` is unpacked there.
2. Start a throwaway PostgreSQL server (``scripts/pg_throwaway.sh``) unless
   ``HPARAM_JOBLIB_TEST_PG_URL`` names one.
3. Run pytest on the sdist's ``tests/storages_tests`` with the ``hj_optuna_modes`` plugin (this
   directory), which adds our storages as modes and lists the expected deviations.

Usage: ``python tests/optuna_suite/run.py [--hj-storages=optuna] [pytest args...]``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # our tests package (the PostgreSQL starter), when run as a script

from tests._pgserver import bin_dir, free_port, start_server, stop_server


def cache_dir() -> Path:
    root = os.environ.get("HPARAM_JOBLIB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hparam_joblib"
    )
    return Path(root) / "optuna-sdist"


def optuna_tests(version: str) -> Path:
    """The unpacked ``tests/`` of Optuna ``version``'s sdist (downloaded once)."""
    root = cache_dir() / f"optuna-{version}"
    tests = root / "tests"
    if (tests / "storages_tests").is_dir():
        return root
    with tempfile.TemporaryDirectory(prefix="hj-sdist-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
             f"optuna=={version}", "-d", tmp],
            check=True,
        )
        archives = list(Path(tmp).glob("optuna-*.tar.gz"))
        if len(archives) != 1:
            sys.exit(f"pip download gave {archives}, expected one optuna sdist")
        staging = Path(tmp) / "x"
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.split("/")[1:2] == ["tests"]]
            tar.extractall(staging, members=members, filter="data")
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(str(next(staging.iterdir())), root)
    return root


def main(argv: list[str]) -> int:
    version = importlib.metadata.version("optuna")
    root = optuna_tests(version)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    pg_dir: Path | None = None
    if not env.get("HPARAM_JOBLIB_TEST_PG_URL") and "--hj-storages=optuna" not in argv and bin_dir():
        pg_dir = Path(tempfile.mkdtemp(prefix="hj-optuna-pg-"))
        env["HPARAM_JOBLIB_TEST_PG_URL"] = start_server(pg_dir, free_port())
    cmd = [
        sys.executable, "-m", "pytest", "-p", "hj_optuna_modes", "-c", str(HERE / "pytest.ini"),
        "--rootdir", str(root), str(root / "tests" / "storages_tests"), *argv,
    ]
    print(f"optuna {version}: {' '.join(cmd[3:])}", flush=True)
    try:
        return subprocess.run(cmd, cwd=root, env=env, check=False).returncode
    finally:
        if pg_dir is not None:
            stop_server(pg_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A pytest plugin that runs Optuna's own ``tests/storages_tests`` (from Optuna's sdist, never
copied here) against hparam_joblib's storages, opened the way a worker opens them.

Loaded by ``tests/optuna_suite/run.py`` (``make optuna-storage-tests``) with ``-p hj_optuna_modes``.

* ``--hj-storages=ours`` (default): Optuna's storage modes are replaced by ours:

  ============================  =============================================================
  ``hj_sqlite``                 ``SearchStorage`` on a SQLite file (what a worker's storage is)
  ``hj_cached_sqlite``          the same inside Optuna's ``_CachedStorage`` (what
                                ``optuna.load_study`` wraps it in, in every worker)
  ``hj_journal``                ``JournalSearchStorage`` on a journal file
  ``hj_postgresql``             ``SearchStorage`` on a fresh PostgreSQL database
  ``hj_cached_postgresql``      the same inside ``_CachedStorage``
  ============================  =============================================================

  Tests that name a mode themselves (``StorageSupplier("sqlite")``) get ours too:
  ``sqlite`` -> ``hj_sqlite``, ``cached_sqlite`` -> ``hj_cached_sqlite``, ``journal`` ->
  ``hj_journal``; one that names ``sqlite`` with heartbeat arguments gets ``hj_postgresql``.
  The heartbeat tests run on the PostgreSQL modes (heartbeats are off on SQLite and the
  journal by design, see :data:`NOT_RUN`).
* ``--hj-storages=optuna``: Optuna's own modes, untouched (the control run).

Expected deviations are listed once, in :data:`DEVIATIONS`, each with its reason; they are
marked ``xfail(strict=True)``, so a deviation that stops deviating fails the run too.

A storage is opened as in a search: the launcher's steps first (``prepare``: the directory and
WAL; ``open_storage(create_tables=True)``; ``add_budget_index``), then the worker's
``open_storage(location, run_id=...)`` is what the test gets. The budget is ``None``: Optuna's
tests create trials without a limit.

PostgreSQL: ``HPARAM_JOBLIB_TEST_PG_URL`` names a server (``postgresql://user@host:port``); each
storage gets a fresh database on it, dropped afterwards. Without it the PostgreSQL modes are
skipped, or fail when ``HPARAM_JOBLIB_REQUIRE_PG=1``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

#: Our modes, and which hard-coded Optuna mode names map to which of ours.
OUR_MODES = ["hj_sqlite", "hj_cached_sqlite", "hj_journal", "hj_postgresql", "hj_cached_postgresql"]
OUR_HEARTBEAT_MODES = ["hj_postgresql", "hj_cached_postgresql"]
SUBSTITUTE = {"sqlite": "hj_sqlite", "cached_sqlite": "hj_cached_sqlite", "journal": "hj_journal"}
#: A test that names sqlite but wants heartbeats gets our heartbeat storage (see NOT_RUN).
HEARTBEAT_SUBSTITUTE = {"hj_sqlite": "hj_postgresql", "hj_cached_sqlite": "hj_cached_postgresql"}

#: Test files that construct Optuna's own storages directly (RDBStorage(url), JournalStorage(
#: backend), _CachedStorage(RDBStorage)): they run in the control (--hj-storages=optuna) only.
OPTUNA_ONLY = (
    "storages_tests/rdb_tests/", "storages_tests/test_cached_storage.py",
    "storages_tests/journal_tests/test_log_compatibility.py",
)

#: Where heartbeats are off by design: Optuna's heartbeat tests are not run on these modes.
NOT_RUN = {
    "hj_sqlite": "heartbeats are off on SQLite by design: a dead owner on the one machine is "
                 "found by its pid at once, no per-trial heartbeat write is needed",
    "hj_cached_sqlite": "as hj_sqlite",
    "hj_journal": "no heartbeats on a journal file (Optuna's JournalStorage has none either)",
}

_PICKLE = ("our storages refuse pickling on purpose: each process opens its own from the "
           "location (a pickled engine or flock would be shared across processes)")
_OWNER = ("every trial we create carries our owner system attr (host, pid, start time, run) "
          "written with the trial, so a trial's system_attrs are not empty")
_HEARTBEAT_WARNING = ("heartbeats are a documented feature of our PostgreSQL storage "
                      "(heartbeat_interval in the YAML), not an experimental opt-in: no "
                      "ExperimentalWarning")

#: (test name as in the node id, mode) -> why we deviate from Optuna on purpose. "*" = any mode.
DEVIATIONS: dict[tuple[str, str], str] = {
    ("TestStorage::test_pickle_storage", "*"): _PICKLE,
    ("TestStorage::test_create_new_trial", "*"): _OWNER,
    ("TestStorage::test_set_trial_system_attr", "*"): _OWNER,
    ("test_heartbeat_experimental_warnings", "*"): _HEARTBEAT_WARNING,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hj-storages", choices=("ours", "optuna"), default="ours",
                     help="run Optuna's storage tests on our storages (default) or Optuna's own")


def pytest_configure(config: pytest.Config) -> None:
    import optuna.testing.storages as supplier_module

    if config.getoption("--hj-storages") != "ours":
        return
    # The test modules read these lists at import: change them in place, before collection.
    supplier_module.STORAGE_MODES[:] = OUR_MODES
    supplier_module.STORAGE_MODES_HEARTBEAT[:] = OUR_HEARTBEAT_MODES
    supplier = supplier_module.StorageSupplier
    original_enter = supplier.__enter__
    original_exit = supplier.__exit__

    def enter(self: Any) -> Any:
        mode = SUBSTITUTE.get(self.storage_specifier, self.storage_specifier)
        if mode in HEARTBEAT_SUBSTITUTE and "heartbeat_interval" in self.extra_args:
            mode = HEARTBEAT_SUBSTITUTE[mode]
        if not mode.startswith("hj_"):
            return original_enter(self)
        self._hj = _OurStorage(mode, dict(self.extra_args))
        self.storage = self._hj.open()
        return self.storage

    def exit_(self: Any, *exc: Any) -> None:
        ours = getattr(self, "_hj", None)
        if ours is None:
            original_exit(self, *exc)
            return
        ours.close()

    supplier.__enter__ = enter
    supplier.__exit__ = exit_


def _mode_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return ""
    for key in ("storage_mode", "storage"):
        value = callspec.params.get(key)
        if isinstance(value, str):
            return value
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = config.getoption("--hj-storages") == "ours"
    try:
        import grpc  # noqa: F401
        has_grpc = True
    except ImportError:
        has_grpc = False
    for item in items:
        mode = _mode_of(item)
        if not has_grpc and ("grpc" in item.nodeid.lower()):
            item.add_marker(pytest.mark.skip(reason="grpcio is not installed (Optuna's gRPC proxy tests)"))
            continue
        if "redis" in item.nodeid.lower():
            item.add_marker(pytest.mark.skip(reason="Optuna's Redis journal backend is not one of ours "
                                                    "(and fakeredis needs its lua extra for it)"))
            continue
        if not ours:
            continue
        if any(part in item.nodeid for part in OPTUNA_ONLY):
            item.add_marker(pytest.mark.skip(reason="builds Optuna's own storage classes itself: "
                                                    "no storage of ours is involved"))
            continue
        name = item.nodeid.split("::", 1)[1].split("[", 1)[0] if "::" in item.nodeid else item.nodeid
        for (test, where), why in DEVIATIONS.items():
            if name == test and where in ("*", mode):
                item.add_marker(pytest.mark.xfail(reason=f"expected deviation: {why}", strict=True))


_MODE_OF: dict[str, str] = {}
_COUNTS: dict[str, dict[str, int]] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        _MODE_OF[item.nodeid] = _mode_of(item) or "(no mode parameter)"
        # carried by the reports, so the table is right under pytest-xdist (-n), whose controller
        # sees the reports but not the items
        item.user_properties.append(("hj_mode", _MODE_OF[item.nodeid]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
        else:
            outcome = report.outcome
        mode = dict(report.user_properties).get("hj_mode") or _MODE_OF.get(report.nodeid, "?")
        counts = _COUNTS.setdefault(str(mode), {})
        counts[outcome] = counts.get(outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("per storage mode")
    for mode in sorted(_COUNTS):
        counts = _COUNTS[mode]
        shown = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "xfailed", "xpassed", "skipped")
                          if counts.get(k))
        terminalreporter.write_line(f"{mode:28s} {shown}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    import optuna

    which = config.getoption("--hj-storages")
    return [f"hj_optuna_modes: optuna {optuna.__version__}, storages: {which}"]


class _OurStorage:
    """One of our storages for one test: created as a launcher does, opened as a worker does."""

    def __init__(self, mode: str, extra: dict[str, Any]) -> None:
        self.mode = mode
        self.extra = extra
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.pg_url = ""
        self.opened: list[Any] = []

    def open(self) -> Any:
        from optuna.storages import _CachedStorage

        from hparam_joblib.storage import StorageLocation, open_storage, prepare

        kind = self.mode.removeprefix("hj_").removeprefix("cached_")
        if "failed_trial_callback" in self.extra:  # Optuna's deprecated name
            self.extra["heartbeat_stale_trial_callback"] = self.extra.pop("failed_trial_callback")
        heartbeat = {k: self.extra.pop(k) for k in ("heartbeat_interval", "grace_period",
                                                    "heartbeat_stale_trial_callback") if k in self.extra}
        journal_file = self.extra.pop("file", None)
        if self.extra:
            raise TypeError(f"{self.mode}: unexpected StorageSupplier arguments {sorted(self.extra)}")
        if kind == "postgresql":
            location = StorageLocation("postgresql", url=self._fresh_database())
        else:
            self.tmp = tempfile.TemporaryDirectory(prefix="hj-optuna-")
            if kind == "journal":
                path = journal_file.name if journal_file is not None else str(Path(self.tmp.name) / "study.journal")
                location = StorageLocation("journal", path=path)
            else:
                location = StorageLocation.sqlite(Path(self.tmp.name) / "study.db")
        prepare(location, _policy())
        launcher = open_storage(location, create_tables=True, policy=_policy(), **heartbeat)
        launcher.add_budget_index()
        self._dispose(launcher)
        storage = open_storage(location, run_id=f"optuna-tests-{uuid.uuid4().hex[:6]}", policy=_policy(),
                               **heartbeat)
        self.opened.append(storage)
        return _CachedStorage(storage) if "cached" in self.mode else storage  # type: ignore[arg-type]

    def _fresh_database(self) -> str:
        base = os.environ.get("HPARAM_JOBLIB_TEST_PG_URL", "").rstrip("/")
        if not base:
            why = "no PostgreSQL server: set HPARAM_JOBLIB_TEST_PG_URL=postgresql://user@host:port"
            if os.environ.get("HPARAM_JOBLIB_REQUIRE_PG") == "1":
                pytest.fail(why)
            pytest.skip(why)
        self.pg_url = _pgserver().create_database(base, "hj_optuna")
        return self.pg_url

    @staticmethod
    def _dispose(storage: Any) -> None:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()
        close = getattr(storage, "close", None)
        if callable(close):
            close()

    def close(self) -> None:
        for storage in self.opened:
            self._dispose(storage)
        if self.pg_url:
            _pgserver().drop_database(self.pg_url)
        if self.tmp is not None:
            self.tmp.cleanup()


def _policy() -> Any:
    from hparam_joblib.storage import RetryPolicy

    return RetryPolicy()


def _pgserver() -> Any:
    """Our ``tests/_pgserver.py`` (its database steps), loaded by its path: here ``tests`` is
    Optuna's own test package (the sdist's), which shadows ours."""
    module = sys.modules.get("hj_pgserver")
    if module is None:
        path = Path(__file__).resolve().parents[1] / "_pgserver.py"
        spec = importlib.util.spec_from_file_location("hj_pgserver", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["hj_pgserver"] = module
        spec.loader.exec_module(module)
    return module

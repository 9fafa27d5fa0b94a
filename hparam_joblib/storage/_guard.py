"""The call-path guard: before any trial, prove that Optuna's public ``ask()``, ``tell()`` and
``enqueue_trial()`` reach our budgeted storage code.

The exact budget lives in our storage's trial creation, which Optuna's cache reaches through a
private method (``_CachedStorage`` -> ``RDBStorage._create_new_trial``). A release that moves that
call would create trials that skip the budget and leave nothing to notice: a search that never
stops. So each launch first runs a tiny study through the same storage class on a scratch file
in a temporary directory (never the user's), with a budget of one trial:

1. ``study.ask()`` must create its trial through our budgeted creation;
2. ``study.tell()`` must finish it (read back from the file by SQLite, or by plain Optuna's
   journal reader);
3. a second ``ask()`` and an ``enqueue_trial()`` must both be refused by the budget.

Anything else, an unexpected exception included, stops the launch with one line
(:class:`UpgradeError`) before the user's database is opened. It costs tens of milliseconds
once per process and storage kind. The workers check every trial as well (``loops/_worker``:
a trial that neither our creation made nor our wrapper popped from the queue stops the search),
so a path moved only where trials run cannot slip through either.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path
from typing import cast

from hparam_joblib._errors import UpgradeError, one_line
from hparam_joblib.storage._base import BudgetExhausted
from hparam_joblib.storage._factory import open_storage
from hparam_joblib.storage._location import StorageLocation

logger = logging.getLogger("hparam_joblib")

_lock = threading.Lock()
#: Storage classes already checked in this process ("rdb", "journal").
_checked: set[str] = set()


def _fail(what: str) -> UpgradeError:
    import optuna

    from hparam_joblib._tested import describe, inside

    advice = (
        f"hparam_joblib was tested with {describe('optuna')}: install a tested release"
        if not inside("optuna", optuna.__version__) else
        "this Optuna is a tested release, so this is a bug in hparam_joblib: please report it with this line"
    )
    return UpgradeError(
        f"optuna {optuna.__version__}: {what}, so the exact n_trials budget cannot hold; no trial was run. {advice}"
    )


def check_call_paths(kind: str) -> None:
    """Run the guard for the storage class of ``kind`` (``sqlite``/``postgresql`` share one).

    Raises:
        UpgradeError: Optuna does not create, finish or refuse trials through our storage.
    """
    family = "journal" if kind == "journal" else "rdb"
    with _lock:
        if family in _checked:
            return
        try:
            _probe(family)
        except UpgradeError:
            raise
        except Exception as err:  # any surprise on this path is an upgrade problem
            raise _fail(f"the budget guard's scratch study failed ({type(err).__name__}: {one_line(err, 200)})") from err
        _checked.add(family)


def _probe(family: str) -> None:
    import optuna
    from optuna.storages import BaseStorage

    # In memory where the machine has a tmpfs: the schema's DDL would otherwise wait on ~14 fsyncs.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="hparam_joblib-guard-", dir=shm) as scratch:
        if family == "journal":
            location = StorageLocation("journal", path=str(Path(scratch) / "guard.journal"))
        else:
            location = StorageLocation("sqlite", path=str(Path(scratch) / "guard.db"))
        storage = open_storage(location, budget=1, run_id="guard", create_tables=True)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
        try:
            study = optuna.create_study(storage=cast(BaseStorage, storage), study_name="guard")
            trial = study.ask()
            if trial._trial_id not in storage.created_trial_ids:
                raise _fail("study.ask() created a trial without going through hparam_joblib's budgeted creation")
            study.tell(trial, 0.0)
            for what, call in (("study.ask()", study.ask), ("study.enqueue_trial()", lambda: study.enqueue_trial({}))):
                try:
                    call()
                except BudgetExhausted:
                    continue
                raise _fail(f"{what} created a trial past a full budget")
            states = _states_on_disk(location)
            if states != ["COMPLETE"]:
                raise _fail(f"after one ask() and tell() the scratch study holds {states}, not one COMPLETE trial")
        finally:
            optuna.logging.set_verbosity(verbosity)
            storage.close()


def _states_on_disk(location: StorageLocation) -> list[str]:
    """The trial states in the scratch file as another reader sees them: plain Optuna's journal
    reader, or SQLite itself (a plain ``RDBStorage`` would import alembic: 0.45 s)."""
    if location.kind == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        plain = JournalStorage(JournalFileBackend(location.path))
        study_id = plain.get_study_id_from_name("guard")
        return [t.state.name for t in plain.get_all_trials(study_id, deepcopy=False)]
    with closing(sqlite3.connect(f"file:{location.path}?mode=ro", uri=True)) as conn:
        return [str(row[0]) for row in conn.execute("SELECT state FROM trials ORDER BY trial_id")]

"""The study storage: a SQLite file (default), a PostgreSQL server, or an Optuna journal file.

Laid out like Optuna's own ``optuna/storages/``; each module has one job:

* ``_location``: what ``storage:`` means (:class:`StorageSpec`) and where a study lives
  (:class:`StorageLocation`); the stored-direction check.
* ``_factory``: the only place that turns a location into a storage (open, pre-flight,
  prepare, read-only load) or a results command's DB text into a location; the other modules
  never look at the storage kind.
* ``_readonly``: a study database read without writing anything (:class:`Database`, the
  results CLI and ``--best``): its studies, one loaded, the heartbeats of its running trials.
* ``_base``: what the launcher and workers use of a storage (:class:`StudyStore`), the budget
  states.
* ``_retry``: the retry policy and which errors are transient (SQLite locks, PostgreSQL
  deadlocks, serialization failures, lost connections).
* ``_owners``: who runs a trial (host, pid, start time) and whether it is alive, and reaping:
  dead owners, trials without an owner, heartbeat-stale trials (Optuna's callbacks run on those).
* ``_failure_rows``: why trials did not complete, as rows (each storage's ``failure_attrs``).
* ``_sqlite`` / ``_postgresql``: each database's specifics (WAL, pragmas, the writers' flock,
  the pre-flight; drivers, connect options, readable connection errors).
* ``_fast_path``: SQLAlchemy Core statements for the hot path (what Optuna's ORM reads and
  writes, at a fraction of the CPU).
* ``_rdb``: :class:`SearchStorage`, Optuna's RDBStorage with the budget, owners, buffered
  writes, retries and heartbeats.
* ``_journal``: :class:`JournalSearchStorage`, Optuna's JournalStorage with the same rules.
"""

from __future__ import annotations

from hparam_joblib.storage._base import BudgetExhausted, StudyStore, n_finished, n_taken
from hparam_joblib.storage._factory import (
    failure_attrs,
    location_for,
    open_storage,
    open_study_readonly,
    preflight,
    prepare,
)
from hparam_joblib.storage._guard import check_call_paths
from hparam_joblib.storage._journal import JournalSearchStorage
from hparam_joblib.storage._location import StorageLocation, check_directions
from hparam_joblib.storage._owners import fail_trial, owner_is_dead, owner_record, reap_dead_owners
from hparam_joblib.storage._postgresql import driver_url
from hparam_joblib.storage._rdb import SearchStorage
from hparam_joblib.storage._readonly import Database, heartbeat_ages, load_study, open_database, reading_study
from hparam_joblib.storage._retry import RetryPolicy, causes

#: What the rest of the package uses of storage/ (and the two storage classes); anything else is
#: imported from its module by the code or test that needs it.
__all__ = [
    "BudgetExhausted",
    "Database",
    "JournalSearchStorage",
    "RetryPolicy",
    "SearchStorage",
    "StorageLocation",
    "StudyStore",
    "causes",
    "check_call_paths",
    "check_directions",
    "driver_url",
    "fail_trial",
    "failure_attrs",
    "heartbeat_ages",
    "load_study",
    "location_for",
    "n_finished",
    "n_taken",
    "open_database",
    "open_storage",
    "open_study_readonly",
    "owner_is_dead",
    "owner_record",
    "preflight",
    "prepare",
    "reading_study",
    "reap_dead_owners",
]

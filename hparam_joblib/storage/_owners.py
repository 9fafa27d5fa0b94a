"""Who runs a trial (host, pid, process start time, launch) and reaping: trials whose owner
process died, trials without an owner record nobody can finish, and (on a server) trials
whose heartbeat went silent.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from hparam_joblib._keys import FAILURE_KIND_KEY, FAILURE_REASON_KEY, WORKER_DIED
from hparam_joblib.storage._base import StudyStore

logger = logging.getLogger("hparam_joblib")


def process_start_time(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def owner_record(run_id: str) -> dict[str, Any]:
    """Who runs a trial: host, pid, process start time and the launch it belongs to."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start_time(pid), "run": run_id}


def owner_is_dead(owner: Mapping[str, Any]) -> bool:
    """True when ``owner`` ran on this host and that process no longer exists (its pid is
    free, or now names a process that started at another time)."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's; anything else: cannot tell
        return False
    started = process_start_time(pid)
    return owner.get("start") is not None and started is not None and started != owner["start"]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _descends_from(pid: int, family: int) -> bool:
    """True when ``pid`` is ``family`` or one of its descendants (workers, trial processes)."""
    for _ in range(32):
        if pid == family:
            return True
        if pid <= 1:
            return False
        pid = _ppid(pid)
    return False


def file_holders(db_path: str, family: int | None = None) -> list[str]:
    """``"pid (name)"`` of each process that has the database file open, other than this one
    and, when ``family`` (the launcher's pid) is given, the launcher and its descendants."""
    targets = {os.path.realpath(db_path + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
    holders: list[str] = []
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == me or (family is not None and _descends_from(pid, family)):
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            opened = any(os.path.realpath(f"/proc/{pid}/fd/{fd}") in targets for fd in fds)
        except OSError:
            continue
        if opened:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
                    name = handle.read().strip()
            except OSError:
                name = "?"
            holders.append(f"{pid} ({name})")
    return holders


def describe_holders(db_path: str, family: int | None = None) -> str:
    """Name the processes that have the database file open, other than this search's own."""
    holders = file_holders(db_path, family)
    if not holders:
        return "another process holds a write transaction on it"
    return "processes with it open: " + ", ".join(holders[:8])


def fail_trial(storage: StudyStore, trial_id: int, reason: str, kind: str = WORKER_DIED) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and ``failure_kind`` (``worker_died`` or
    ``interrupted``, see ``_failures``); False if it had already finished."""
    try:
        storage.set_trial_user_attr(trial_id, FAILURE_REASON_KEY, reason)
        storage.set_trial_user_attr(trial_id, FAILURE_KIND_KEY, kind)
        return bool(storage.set_trial_state_values(trial_id, TrialState.FAIL))
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def grace_seconds(storage: StudyStore) -> float:
    """Seconds without a heartbeat after which a RUNNING trial is stale: the storage's
    ``grace_period``, or Optuna's default when it is ``None`` (2 x ``heartbeat_interval``)."""
    grace = getattr(storage, "grace_period", None)
    if grace is not None:
        return float(grace)
    return 2.0 * float(getattr(storage, "heartbeat_interval", None) or 0)


def stale_with_reasons(storage: StudyStore, study_id: int) -> list[tuple[int, int, str]]:
    """``(trial_id, number, reason)`` of each RUNNING trial whose heartbeat went silent."""
    stale = storage.stale_trials(study_id)
    if not stale:
        return []
    owners = {trial_id: (number, owner) for trial_id, number, owner in storage.running_owners(study_id)}
    grace = grace_seconds(storage)
    out = []
    for trial_id in stale:
        if trial_id not in owners:  # finished meanwhile
            continue
        number, owner = owners[trial_id]
        who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "its process"
        out.append((trial_id, number,
                    f"no heartbeat for over {grace:g} s from {who} (its machine or process died); it will be re-run"))
    return out


def reap_stale(storage: StudyStore, study_id: int) -> list[int]:
    """Fail RUNNING trials whose heartbeat went silent (a machine or process that died
    elsewhere); servers with heartbeats only. Returns the numbers of the trials failed."""
    reaped: list[int] = []
    for trial_id, number, why in stale_with_reasons(storage, study_id):
        if fail_trial(storage, trial_id, why):
            reaped.append(number)
            logger.warning("trial %d: %s", number, why)
    return reaped


#: Ownerless trials already reported by this process (warned once, not at every poll).
_OWNERLESS_NAMED: set[tuple[str, int]] = set()
#: A queued trial a loop has just taken over is RUNNING for a moment before its owner record is
#: written: an ownerless trial younger than this is left alone.
OWNERLESS_GRACE_SECONDS = 30.0


def _just_started(storage: StudyStore, trial_id: int) -> bool:
    """Did the RUNNING trial start less than :data:`OWNERLESS_GRACE_SECONDS` ago?"""
    try:
        started = storage.get_trial(trial_id).datetime_start
    except Exception:  # noqa: BLE001 - gone meanwhile: nothing to reap
        return True
    if started is None:
        return False
    now = datetime.datetime.now(started.tzinfo) if started.tzinfo else datetime.datetime.now()
    return (now - started).total_seconds() < OWNERLESS_GRACE_SECONDS


def reap_ownerless(storage: StudyStore, study_id: int, trials: list[tuple[int, int]]) -> list[int]:
    """RUNNING trials without our owner record (created outside hparam_joblib, e.g. by a plain
    Optuna ``study.ask()``): on SQLite, failed when no process outside this search has the file
    open (nobody is left who could finish them); otherwise named once, since the search waits
    for them to finish. ``trials`` is ``[(trial_id, number)]``. Returns the numbers failed."""
    reaped: list[int] = []
    where = storage.location.kind
    for trial_id, number in trials:
        if _just_started(storage, trial_id):  # a queued trial being taken over by one of our loops
            continue
        holders = file_holders(storage.db_path, storage.family) if where == "sqlite" else []
        if where == "sqlite" and not holders:
            why = ("RUNNING with no owner record (not started by hparam_joblib, e.g. a plain Optuna "
                   "study.ask()) and no process has the database open any more: nobody can finish it")
            if fail_trial(storage, trial_id, why):
                reaped.append(number)
                logger.warning("trial %d: %s; marked FAIL", number, why)
            continue
        if (storage.db_path, trial_id) in _OWNERLESS_NAMED:
            continue
        _OWNERLESS_NAMED.add((storage.db_path, trial_id))
        who = f"{', '.join(holders[:4])} ha{'s' if len(holders) == 1 else 've'} the database open" if holders \
            else "hparam_joblib cannot tell whether its process is alive"
        logger.warning(
            "trial %d is RUNNING with no owner record (not started by hparam_joblib, e.g. a plain Optuna "
            "study.ask()); %s: the search waits for it to finish (or fail it: study.tell(%d, state=FAIL))",
            number, who, number,
        )
    return reaped


def reap_dead_owners(
    storage: StudyStore, study_id: int, dead_pids: set[int] | None = None, reason: str = ""
) -> list[int]:
    """Fail RUNNING trials whose owner process is gone (or is in ``dead_pids``), trials
    without an owner nobody can finish (:func:`reap_ownerless`), and, on a server, trials whose
    heartbeat went silent.

    Returns:
        The numbers of the trials marked FAIL; they no longer count against the budget.
    """
    reaped: list[int] = []
    ownerless: list[tuple[int, int]] = []
    for trial_id, number, owner in storage.running_owners(study_id):
        if not owner:
            ownerless.append((trial_id, number))
            continue
        ours_and_dead = dead_pids is not None and owner.get("pid") in dead_pids and (
            owner.get("host") == socket.gethostname()
        )
        if ours_and_dead or owner_is_dead(owner):
            why = reason or f"its process (pid {owner.get('pid')}) died while the trial ran"
            if fail_trial(storage, trial_id, why):
                reaped.append(number)
    return reaped + reap_ownerless(storage, study_id, ownerless) + reap_stale(storage, study_id)



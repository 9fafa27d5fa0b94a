"""How many trials of one launch run at once on this host, lowered when memory runs out.

Each loop holds one of the launch's per-host job slots (a ``flock``, ``_slots``) for its life:
slot ``i`` of ``n_jobs``. A file beside the lock files holds how many slots are open (``n_jobs``
until memory ran out). When a trial is killed for memory while others ran beside it, its loop
lowers that number to the trials that were running, less one; before each trial, a loop whose
slot is no longer open ends (after its current trial; its warm trial process and the memory it
holds go with it), and the launcher does not start another in its place. Memory is per host,
so the file is too: on a Dask cluster each host lowers its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from hparam_joblib._flock import lock, open_lock_file, unlock
from hparam_joblib.runtime.loops._slots import Slot, shared_directory, slot_directory, take_named_slot
from hparam_joblib.runtime.trial._memory import Cgroup, headroom_mib, memory_cgroup, rss_mib

logger = logging.getLogger("hparam_joblib")

#: ``n_jobs: auto`` admits a trial when the memory left holds the largest trial peak seen (less
#: what its warm process already holds) times this, plus :data:`MARGIN_MIB`.
MARGIN = 1.1
MARGIN_MIB = 32.0
_ADMIT_POLL_SECONDS = 0.2


def jobs_directory() -> Path:
    """Where this host's job slots and open-slot counts live."""
    return slot_directory("jobs")


def _count_file(run_id: str) -> Path:
    return jobs_directory() / f"{run_id}.jobs"


def open_slots(run_id: str, n_jobs: int) -> int:
    """How many of launch ``run_id``'s ``n_jobs`` slots are open on this host."""
    try:
        value = int(_count_file(run_id).read_text().strip() or n_jobs)
    except (OSError, ValueError):
        return n_jobs
    return max(1, min(n_jobs, value))


def lower_open_slots(run_id: str, n_jobs: int, running: int) -> int | None:
    """After an out-of-memory kill with ``running`` trials at once: open ``running - 1`` slots
    at most (never fewer than 1). Two loops killed together lower it once (the file is read and
    written under a lock). Returns the new number, or None when it was already that low."""
    try:
        directory = shared_directory(jobs_directory())
        fd = open_lock_file(directory / f"{run_id}.jobs.lock", 0o666)
    except OSError:
        return None
    try:
        lock(fd)
        now = open_slots(run_id, n_jobs)
        new = max(1, min(now, running - 1))
        if new >= now:
            return None
        tmp = directory / f"{run_id}.jobs.{os.getpid()}"
        try:
            tmp.write_text(f"{new}\n")
            os.replace(tmp, _count_file(run_id))
        except OSError:
            return None
        return new
    finally:
        unlock(fd)
        os.close(fd)


class JobSlot:
    """A loop's job slot for its life (:meth:`take`), and what it tells about the others."""

    def __init__(self, run_id: str, n_jobs: int) -> None:
        self.run_id = run_id
        self.n_jobs = n_jobs
        self.slot: Slot | None = None

    def _names(self, n: int) -> list[str]:
        return [f"{self.run_id}-{i}" for i in range(n)]

    def take(self, first: int = 0) -> bool:
        """Take a free open slot now; False when none is free (this loop is not needed)."""
        n = open_slots(self.run_id, self.n_jobs)
        try:
            self.slot = take_named_slot(self._names(n), jobs_directory(), lambda: True, first=first % n)
        except OSError as err:  # no lock files here: run without (never fewer at once)
            logger.debug("no job slot (%s): this loop runs as if memory never ran out", err)
            return True
        return self.slot is not None

    def closed(self) -> bool:
        """Was this loop's slot closed (memory ran out): it must start no more trials."""
        return self.slot is not None and self.slot.index >= open_slots(self.run_id, self.n_jobs)

    def wait_for_room(self, should_stop: Callable[[], bool], poll: float = 0.1) -> None:
        """Before a trial: while more loops hold a slot than are open (a closed loop still runs
        its last trial), wait, so that the step down takes effect at once."""
        while (self.slot is not None and not self.closed()
               and self.running() > open_slots(self.run_id, self.n_jobs) and not should_stop()):
            time.sleep(poll)

    def running(self) -> int:
        """How many loops of this launch hold a slot on this host (this one included)."""
        if self.slot is None:
            return 1
        held = 0
        directory = jobs_directory()
        for i, name in enumerate(self._names(self.n_jobs)):
            if self.slot is not None and i == self.slot.index:
                held += 1
                continue
            try:
                fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if lock(fd, blocking=False):
                    unlock(fd)
                else:
                    held += 1
            finally:
                os.close(fd)
        return held

    # -- n_jobs: auto ---------------------------------------------------------------------------

    def admit(self, pid: int | None, should_stop: Callable[[], bool]) -> float:
        """``n_jobs: auto``, before a trial in process ``pid``: wait until memory holds one more
        trial besides those running (each counted at the largest trial peak seen on this host;
        before any trial finished, the first runs alone to show it). Returns the seconds waited."""
        if self.slot is None:
            return 0.0
        started = time.monotonic()
        directory = jobs_directory()
        while not should_stop():
            fd = open_lock_file(directory / f"{self.run_id}.admit.lock", 0o666)
            try:
                lock(fd)
                busy = self._busy_pids()
                peak = self._peak()
                if not busy or (peak is not None and self._fits(peak, busy, pid)):
                    (directory / f"{self.run_id}.busy.{self.slot.index}").write_text(str(pid or 0))
                    return time.monotonic() - started
            finally:
                unlock(fd)
                os.close(fd)
            time.sleep(_ADMIT_POLL_SECONDS)
        return time.monotonic() - started

    def finished(self, peak_mib: float | None) -> None:
        """After an admitted trial: it no longer runs; its peak joins the largest seen."""
        if self.slot is None:
            return
        directory = jobs_directory()
        try:
            (directory / f"{self.run_id}.busy.{self.slot.index}").unlink()
        except OSError:
            pass
        if peak_mib and peak_mib > (self._peak() or 0.0):
            tmp = directory / f"{self.run_id}.peak.{os.getpid()}"
            try:
                tmp.write_text(f"{peak_mib:.1f}\n")
                os.replace(tmp, directory / f"{self.run_id}.peak")
            except OSError:
                pass

    def _cgroup(self) -> Cgroup | None:
        if not hasattr(self, "_memory_cgroup"):
            self._memory_cgroup = memory_cgroup()
        return self._memory_cgroup

    def _peak(self) -> float | None:
        try:
            return float((jobs_directory() / f"{self.run_id}.peak").read_text())
        except (OSError, ValueError):
            return None

    def _busy_pids(self) -> list[int]:
        """The trial processes of this launch's other loops that are running a trial now."""
        pids = []
        for path in jobs_directory().glob(f"{self.run_id}.busy.*"):
            if self.slot is not None and path.name.endswith(f".{self.slot.index}"):
                continue
            try:
                pid = int(path.read_text())
            except (OSError, ValueError):
                continue
            if pid == 0 or Path(f"/proc/{pid}").exists():
                pids.append(pid)
        return pids

    def _fits(self, peak: float, busy: list[int], pid: int | None) -> bool:
        room = headroom_mib(self._cgroup())
        if room is None:
            return True
        reserve = sum(max(0.0, peak - rss_mib(p)) for p in busy if p)
        need = max(0.0, peak - (rss_mib(pid) if pid else 0.0))
        return room - reserve >= need * MARGIN + MARGIN_MIB

    def release(self) -> None:
        if self.slot is not None:
            self.slot.release()
            self.slot = None


def remove_launch_files(run_id: str) -> None:
    """The launcher, once its loops are gone: remove this launch's slot files on this host."""
    directory = jobs_directory()
    if not directory.is_dir():
        return
    for path in directory.glob(f"{run_id}*"):
        try:
            path.unlink()
        except OSError:
            pass

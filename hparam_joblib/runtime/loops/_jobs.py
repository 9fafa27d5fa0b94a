"""How many trials of one launch run at once on this host, lowered when memory runs out.

Each loop holds one of the launch's per-host job slots (a ``flock``, ``_slots``) for its life:
slot ``i`` of ``n_jobs``. A file beside the lock files holds how many slots are open (``n_jobs``
until memory ran out). When a trial is killed for memory while others ran beside it, its loop
lowers that number to the trials that were running, less one; before each trial, a loop whose
slot is no longer open ends (after its current trial; its warm trial process and the memory it
holds go with it), and the launcher does not start another in its place. Memory is per host,
so the file is too: on a Dask cluster each host lowers its own.

``n_jobs: auto``: every loop keeps its slot, and a trial starts only when :meth:`JobSlot.admit`
lets it: fewer running than the open count, and the memory left holding one more trial at the
recent trial peak (the largest of the last few trials on this host) besides those running. Before
any trial finished, the oldest running trial's resident memory, once it holds still (or it has run
:data:`PROBE_SECONDS`), stands in for the peak (trials load their data first), so a CPU-bound
search starts every slot within a second or two. An out-of-memory kill lowers the open count as above;
it rises again by one when enough trials finished since and memory holds one more at the recent peak.
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
#: Before any trial finished, how long at most the oldest running trial runs before its resident
#: memory stands in for a trial's peak and more trials start; sooner once that memory holds still
#: (changed less than 1 % + 1 MiB over :data:`STEADY_SECONDS`, after :data:`PROBE_MIN_SECONDS`).
PROBE_SECONDS = 2.0
PROBE_MIN_SECONDS = 0.5
STEADY_SECONDS = 0.3
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


def _write(path: Path, text: str) -> bool:
    """Replace ``path``'s content at once (readers see the old or the new, never half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")  # not matched by the globs below
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


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
        if not _write(_count_file(run_id), f"{new}\n"):
            return None
        try:  # trials finished since the last change: counted again from here (``n_jobs: auto``)
            (directory / f"{run_id}.since").unlink()
        except OSError:
            pass
        return new
    finally:
        unlock(fd)
        os.close(fd)


def waiting_for_memory(run_id: str) -> int:
    """How many loops of launch ``run_id`` (``n_jobs: auto``) wait for memory on this host now."""
    return sum(1 for _ in jobs_directory().glob(f"{run_id}.wait.*"))


def running_trials(run_id: str) -> int:
    """How many admitted trials of launch ``run_id`` (``n_jobs: auto``) run on this host now."""
    count = 0
    for path in jobs_directory().glob(f"{run_id}.busy.*"):
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            continue
        if pid == 0 or Path(f"/proc/{pid}").exists():
            count += 1
    return count


class JobSlot:
    """A loop's job slot for its life (:meth:`take`), and what it tells about the others.

    With ``auto`` (``n_jobs: auto``) no slot ever closes: :meth:`admit` decides, before each
    trial, whether one more runs now."""

    def __init__(self, run_id: str, n_jobs: int, auto: bool = False) -> None:
        self.run_id = run_id
        self.n_jobs = n_jobs
        self.auto = auto
        self.slot: Slot | None = None
        #: Before any peak: the oldest running trial's pid, resident MiB and when that was read.
        self._probe: tuple[int, float, float] | None = None

    def _names(self, n: int) -> list[str]:
        return [f"{self.run_id}-{i}" for i in range(n)]

    def take(self, first: int = 0) -> bool:
        """Take a free open slot now; False when none is free (this loop is not needed)."""
        n = self.n_jobs if self.auto else open_slots(self.run_id, self.n_jobs)
        try:
            self.slot = take_named_slot(self._names(n), jobs_directory(), lambda: True, first=first % n)
        except OSError as err:  # no lock files here: run without (never fewer at once)
            logger.debug("no job slot (%s): this loop runs as if memory never ran out", err)
            return True
        return self.slot is not None

    def closed(self) -> bool:
        """Was this loop's slot closed (memory ran out): it must start no more trials."""
        if self.auto:
            return False
        return self.slot is not None and self.slot.index >= open_slots(self.run_id, self.n_jobs)

    def wait_for_room(self, should_stop: Callable[[], bool], poll: float = 0.1) -> None:
        """Before a trial: while more loops hold a slot than are open (a closed loop still runs
        its last trial), wait, so that the step down takes effect at once. (``auto``: :meth:`admit`
        waits instead.)"""
        while (self.slot is not None and not self.auto and not self.closed()
               and self.running() > open_slots(self.run_id, self.n_jobs) and not should_stop()):
            time.sleep(poll)

    def running(self) -> int:
        """How many loops of this launch hold a slot on this host (this one included); with
        ``auto``, how many trials run (this one included)."""
        if self.slot is None:
            return 1
        if self.auto:
            return 1 + len(self._busy())
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
        """``n_jobs: auto``, before a trial in process ``pid``: wait until fewer trials run than
        are open and memory holds one more besides them (each counted at the recent trial peak
        on this host; before any trial finished, at the oldest running trial's resident memory
        once it ran :data:`PROBE_SECONDS`). Alone, a trial always starts. Returns about how many
        seconds it waited because memory would not hold it (not the first look, nor the open count)."""
        if self.slot is None:
            return 0.0
        for_memory = 0.0
        directory = jobs_directory()
        waiting = directory / f"{self.run_id}.wait.{self.slot.index}"  # the progress line counts these
        try:
            while not should_stop():
                fd = open_lock_file(directory / f"{self.run_id}.admit.lock", 0o666)
                try:
                    lock(fd)
                    busy = self._busy()
                    estimate = self._estimate(busy) if busy else None
                    if not busy or (len(busy) < open_slots(self.run_id, self.n_jobs)
                                    and self._fits(estimate, [p for p, _ in busy], pid)):
                        _write(directory / f"{self.run_id}.busy.{self.slot.index}", str(pid or 0))
                        return for_memory
                finally:
                    unlock(fd)
                    os.close(fd)
                if busy and estimate is not None:  # refused for memory (not the first look, not the cap)
                    for_memory += _ADMIT_POLL_SECONDS
                    if for_memory > _ADMIT_POLL_SECONDS and not waiting.exists():
                        _write(waiting, "")
                time.sleep(_ADMIT_POLL_SECONDS)
            return for_memory
        finally:
            try:
                waiting.unlink()
            except OSError:
                pass

    def finished(self, peak_mib: float | None, out_of_memory: bool = False, ran: bool = True) -> None:
        """After an admitted trial: it no longer runs; its peak joins the recent ones (an
        out-of-memory kill's too: what it held when killed). A trial that finished counts
        toward opening one more slot again (:meth:`_maybe_raise`); ``ran=False``: the room was
        taken but no trial ran in it."""
        if self.slot is None:
            return
        directory = jobs_directory()
        try:
            fd = open_lock_file(directory / f"{self.run_id}.admit.lock", 0o666)
        except OSError:
            return
        try:
            lock(fd)
            try:
                (directory / f"{self.run_id}.busy.{self.slot.index}").unlink()
            except OSError:
                pass
            if peak_mib:
                recent = (self._peaks() + [peak_mib])[-self._window():]
                _write(directory / f"{self.run_id}.peaks", "".join(f"{p:.1f}\n" for p in recent))
            if ran and not out_of_memory:
                self._maybe_raise()
        finally:
            unlock(fd)
            os.close(fd)

    def _window(self) -> int:
        """How many recent trial peaks count: a big configuration long past no longer holds
        the search back."""
        return max(4, 2 * self.n_jobs)

    def _maybe_raise(self) -> None:
        """After a trial finished (under the admit lock): when memory ran out before (fewer slots
        open than ``n_jobs``), as many trials as are open finished since, and memory holds one
        more at the recent peak beside what the open slots take, open one more."""
        open_now = open_slots(self.run_id, self.n_jobs)
        if open_now >= self.n_jobs:
            return
        since_file = jobs_directory() / f"{self.run_id}.since"
        try:
            since = int(since_file.read_text()) + 1
        except (OSError, ValueError):
            since = 1
        peak = self._peak()
        if since < max(2, open_now) or peak is None:
            _write(since_file, f"{since}\n")
            return
        busy = self._busy()
        room = headroom_mib(self._cgroup())
        if room is None:
            return
        reserve = sum(max(0.0, peak - rss_mib(p)) for p, _ in busy if p)
        idle_open = max(0, open_now - len(busy))
        if room - reserve - idle_open * peak < peak * MARGIN + MARGIN_MIB:
            _write(since_file, f"{since}\n")
            return
        try:
            fd = open_lock_file(shared_directory(jobs_directory()) / f"{self.run_id}.jobs.lock", 0o666)
        except OSError:
            return
        try:  # under the lock a step down takes: one happening now wins
            lock(fd)
            raised = open_slots(self.run_id, self.n_jobs) == open_now and \
                _write(_count_file(self.run_id), f"{open_now + 1}\n")
        finally:
            unlock(fd)
            os.close(fd)
        if raised:
            _write(since_file, "0\n")
            logger.warning("memory holds one more trial (recent trial peak %.0f MiB, %.0f MiB free): "
                           "running up to %d at once again", peak, room, open_now + 1)

    def _cgroup(self) -> Cgroup | None:
        if not hasattr(self, "_memory_cgroup"):
            self._memory_cgroup = memory_cgroup()
        return self._memory_cgroup

    def _peaks(self) -> list[float]:
        try:
            return [float(x) for x in (jobs_directory() / f"{self.run_id}.peaks").read_text().split()]
        except (OSError, ValueError):
            return []

    def _peak(self) -> float | None:
        """The largest of the recent trial peaks on this host, or None before any finished."""
        return max(self._peaks(), default=None)

    def _estimate(self, busy: list[tuple[int, float]]) -> float | None:
        """One trial's memory: the recent peak; before any trial finished, the largest resident
        memory of the running trials once the oldest one's holds still or it has run
        :data:`PROBE_SECONDS` (None: wait and look again)."""
        peak = self._peak()
        if peak is not None:
            return peak
        if not busy:
            return None
        oldest, since = min(busy, key=lambda b: b[1])
        ran = time.time() - since
        largest = max((rss_mib(p) for p, _ in busy if p), default=0.0)
        if ran >= PROBE_SECONDS:
            return largest
        if ran < PROBE_MIN_SECONDS or not oldest:
            return None
        now, rss = time.monotonic(), rss_mib(oldest)
        probe = self._probe
        if probe is None or probe[0] != oldest:
            self._probe = (oldest, rss, now)
            return None
        if now - probe[2] < STEADY_SECONDS:
            return None
        self._probe = (oldest, rss, now)
        return largest if abs(rss - probe[1]) <= 0.01 * probe[1] + 1.0 else None

    def _busy(self) -> list[tuple[int, float]]:
        """The trial processes of this launch's other loops that are running a trial now, with
        when each started (pid 0: its process is starting)."""
        busy = []
        for path in jobs_directory().glob(f"{self.run_id}.busy.*"):
            if self.slot is not None and path.name.endswith(f".{self.slot.index}"):
                continue
            try:
                pid = int(path.read_text())
                since = path.stat().st_mtime
            except (OSError, ValueError):
                continue
            if pid == 0 or Path(f"/proc/{pid}").exists():
                busy.append((pid, since))
        return busy

    def _fits(self, peak: float | None, busy: list[int], pid: int | None) -> bool:
        if peak is None:
            return False
        room = headroom_mib(self._cgroup())
        if room is None:
            return True
        reserve = sum(max(0.0, peak - rss_mib(p)) for p in busy if p)
        need = max(0.0, peak - (rss_mib(pid) if pid else 0.0))
        return room - reserve >= need * MARGIN + MARGIN_MIB

    def release(self) -> None:
        if self.slot is not None:
            try:  # an admitted trial that never ran (the loop ended): its room is free
                (jobs_directory() / f"{self.run_id}.busy.{self.slot.index}").unlink()
            except OSError:
                pass
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

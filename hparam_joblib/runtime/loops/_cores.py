"""Which cores a loop's trial process runs on: a disjoint share of this host's cores per trial.

The thread variables reach the libraries that read them; others count cores themselves (LightGBM
asks ``joblib.cpu_count()``, CatBoost and Rust or Go code the CPU affinity) and would start a
pool as large as the machine beside every other trial. A CPU affinity of ``threads`` cores is
what every one of them honours, and each trial gets cores of its own, so two trials never share
one while another stays idle.

Each core is a per-host ``flock`` slot (``<tmp>/hparam_joblib-cores/cpu<N>.lock``, shared by every
user), held by the loop for its trial process's life and freed by the kernel when the loop is
gone. A loop that finds fewer free cores than it needs (another search pins them) takes none: its
trials run on every allowed core, as before. A launch starts its loops at an offset of its own,
so searches that cannot see each other's slots (containers with their own ``/tmp``) seldom pick
the same cores. No pinning either when:

* the share is every allowed core (nothing to split), or ``threads x loops`` exceeds them
  (oversubscribed on purpose: the kernel balances better than a fixed split);
* the cores counted are fewer than the allowed ones (a CPU quota, ``SLURM_CPUS_PER_TASK`` without
  binding): those cores are a number, not a set this search owns, and other jobs on the same
  cores would pick the same ones;
* the user exported a thread or core variable: they size the threads themselves;
* ``HPARAM_JOBLIB_PIN_CORES=0`` is in the environment (a machine shared with other work, where a
  trial tied to a core that something else keeps busy could not move to an idle one).

The allowed cores are this process's own affinity (``taskset``, a Slurm or container cpuset), so
an existing allocation is split, never widened. Only the trial process changes its affinity; the
loop's and the launcher's stay as they were.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from hparam_joblib._flock import lock, unlock
from hparam_joblib.runtime.loops._slots import slot_directory
from hparam_joblib.runtime.trial._isolation import COUNT_VARS, THREAD_VARS

logger = logging.getLogger("hparam_joblib")

#: ``HPARAM_JOBLIB_PIN_CORES=0``: no trial process is pinned (the share still holds through the variables).
PIN_SWITCH = "HPARAM_JOBLIB_PIN_CORES"


class CoreLease:
    """The cores a loop's trial process runs on, each held through one lock file until :meth:`release`."""

    def __init__(self, cpus: tuple[int, ...], fds: list[int]) -> None:
        self.cpus = cpus
        self._fds = fds

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            try:
                unlock(fd)
            finally:
                os.close(fd)


def _shared_directory() -> Path:
    """The slots' directory, which every user may add to (sticky, like ``/tmp``)."""
    directory = slot_directory("cores")
    directory.mkdir(parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o7777 != 0o1777:
        directory.chmod(0o1777)
    return directory


def _open_slot(path: Path) -> int:
    """A descriptor to flock ``path`` on: read-only (a lock needs no write access, so another
    user's file will do), created if missing (not with O_CREAT on an existing file: the kernel's
    ``protected_regular`` refuses that on another user's file in a sticky directory)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)


def allowed_cores() -> tuple[int, ...]:
    """The cores this process may run on (empty where the platform has no CPU affinity)."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def lease_cores(threads: int, loops_here: int, counted: int, environ: Mapping[str, str], *, index: int,
                launch: int) -> CoreLease | None:
    """``threads`` free cores of this process's own for one trial process, or None: no pinning
    (see the module doc). ``counted``: the cores the share was computed from; ``index``: the
    loop's, to spread a launch's loops over the cores; ``launch``: an id of the launch (its pid),
    for its offset."""
    allowed = allowed_cores()
    if not allowed or counted < len(allowed):
        return None
    if threads >= len(allowed) or threads * loops_here > len(allowed):
        return None
    if any(var in environ for var in (*THREAD_VARS, *COUNT_VARS)) or environ.get(PIN_SWITCH, "1") == "0":
        return None
    try:
        directory = _shared_directory()
    except OSError as err:
        logger.debug("trial processes not pinned: %s", err)
        return None
    start = (launch * 7919 + index * threads) % len(allowed)
    taken: list[tuple[int, int]] = []
    for cpu in allowed[start:] + allowed[:start]:
        try:
            fd = _open_slot(directory / f"cpu{cpu}.lock")
        except OSError as err:
            logger.debug("core %d not leased: %s", cpu, err)
            continue
        if lock(fd, blocking=False):
            taken.append((cpu, fd))
            if len(taken) == threads:
                break
        else:
            os.close(fd)
    lease = CoreLease(tuple(sorted(cpu for cpu, _ in taken)), [fd for _, fd in taken])
    if len(taken) < threads:  # the cores are pinned by another search: run on all of them
        lease.release()
        return None
    return lease

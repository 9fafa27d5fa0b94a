"""Was a killed trial process out of memory? The kernel's counters, read before and after a trial.

A process the kernel kills for memory gets a plain SIGKILL; the only sign is a counter:

* cgroup v2: ``memory.events``'s ``oom_kill`` (the process's cgroup and those above it);
* cgroup v1 (many clusters, older Docker hosts): ``memory.oom_control``'s ``oom_kill`` (kernels
  from 4.13), else ``memory.failcnt`` (the usage hit the limit) beside a SIGKILL;
* the whole machine's OOM killer: ``/proc/vmstat``'s ``oom_kill`` (every OOM kill, so it is
  looked at only when no cgroup counter moved).

Imports no Optuna (the trial side).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A v1 limit at or above this is "no limit" (the kernel writes 2**63 rounded to pages).
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class MemoryCounters:
    """The counters that move when the kernel kills a process for memory (None: unreadable)."""

    cgroup_oom: int | None
    failcnt: int | None
    machine_oom: int | None


@dataclass(frozen=True)
class Cgroup:
    """This process's memory cgroup: ``version`` 1 or 2, its directory and the ones above it
    (up to the mount's root) where the limits and counters live."""

    version: int
    path: str
    dirs: tuple[Path, ...]


def memory_cgroup(proc_cgroup: str = "/proc/self/cgroup", root: Path = _CGROUP_ROOT) -> Cgroup | None:
    """The memory cgroup of this process, or None (no cgroup filesystem, or unreadable)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for version, mount, rel in _candidates(lines, root):
        if not mount.is_dir():
            continue
        own = mount / rel.lstrip("/")
        if not own.is_dir():  # a container's namespace shows a path its mount does not have
            own = mount
        dirs = [own]
        while dirs[-1] != mount and mount in dirs[-1].parents:
            dirs.append(dirs[-1].parent)
        marker = "memory.limit_in_bytes" if version == 1 else "memory.max"
        found = tuple(d for d in dirs if (d / marker).exists() or (d / "memory.events").exists())
        if found or version == 1:
            return Cgroup(version, rel, tuple(dirs))
    return None


def _candidates(lines: list[str], root: Path) -> list[tuple[int, Path, str]]:
    """(version, mount, path) for the v1 memory controller first, then the v2 hierarchy."""
    out: list[tuple[int, Path, str]] = []
    v2: list[tuple[int, Path, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if "memory" in controllers.split(","):
            out.append((1, root / controllers, rel))
            if controllers != "memory":
                out.append((1, root / "memory", rel))
        elif controllers == "" and (root / "cgroup.controllers").exists():
            v2.append((2, root, rel))
        elif controllers == "":
            v2.append((2, root / "unified", rel))
    return out + v2


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path, key: str) -> int | None:
    """The number after ``key`` in a ``key value`` file (``memory.events``, ``/proc/vmstat``)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def counters(cgroup: Cgroup | None) -> MemoryCounters:
    """Read the counters now (a few small files)."""
    machine = _keyed(Path("/proc/vmstat"), "oom_kill")
    if cgroup is None:
        return MemoryCounters(None, None, machine)
    if cgroup.version == 2:
        return MemoryCounters(_sum([_keyed(d / "memory.events", "oom_kill") for d in cgroup.dirs]), None, machine)
    return MemoryCounters(
        _sum([_keyed(d / "memory.oom_control", "oom_kill") for d in cgroup.dirs]),
        _sum([_read_int(d / "memory.failcnt") for d in cgroup.dirs]),
        machine,
    )


def limit_mib(cgroup: Cgroup | None) -> float | None:
    """The smallest memory limit on this cgroup and those above it, in MiB (None: no limit)."""
    if cgroup is None:
        return None
    limits = [limit for d in cgroup.dirs if (limit := _dir_limit(cgroup, d)) is not None]
    return min(limits) / 2**20 if limits else None


def machine_mib() -> float | None:
    """The machine's memory (``MemTotal``), in MiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def oom_cause(cgroup: Cgroup | None, before: MemoryCounters, after: MemoryCounters) -> str | None:
    """Why a SIGKILLed process was out of memory, in words (``the memory cgroup's limit of 600
    MiB (cgroup v1 /job)``), or None: no counter says so."""
    def moved(a: int | None, b: int | None) -> bool:
        return a is not None and b is not None and b > a

    limit = limit_mib(cgroup)
    in_cgroup = cgroup is not None and (
        moved(before.cgroup_oom, after.cgroup_oom)
        or (before.cgroup_oom is None and moved(before.failcnt, after.failcnt))
    )
    if cgroup is not None and in_cgroup and limit is not None:
        return f"the memory cgroup's limit of {limit:.0f} MiB (cgroup v{cgroup.version} {cgroup.path})"
    # The kernel counts a kill in the victim's cgroup whichever OOM killer did it: in a cgroup
    # without a limit, the machine ran out.
    if in_cgroup or moved(before.machine_oom, after.machine_oom):
        total = machine_mib()
        return "the machine's memory" + (f" ({total:.0f} MiB)" if total is not None else "")
    return None


def _dir_limit(cgroup: Cgroup, d: Path) -> int | None:
    """The memory limit set on one cgroup directory, in bytes (None: none there)."""
    if cgroup.version == 1:
        value = _read_int(d / "memory.limit_in_bytes")
    else:
        try:
            text = (d / "memory.max").read_text().strip()
        except OSError:
            return None
        value = int(text) if text.isdigit() else None
    return value if value is not None and value < _NO_LIMIT else None


def headroom_mib(cgroup: Cgroup | None) -> float | None:
    """Memory that one more trial could still take, in MiB: at each level of the cgroup that has
    a limit (a SLURM job's limit sits above its step's and task's cgroups, which hold only part of
    its usage), the limit less that level's usage (less the page cache the kernel would reclaim
    first); and the machine's ``MemAvailable``; the smallest of them. None when none is readable."""
    room: list[float] = []
    if cgroup is not None:
        usage, inactive = ("memory.usage_in_bytes", "total_inactive_file") if cgroup.version == 1 \
            else ("memory.current", "inactive_file")
        for d in cgroup.dirs:
            limit = _dir_limit(cgroup, d)
            used = _read_int(d / usage)
            if limit is not None and used is not None:
                room.append((limit - (used - (_keyed(d / "memory.stat", inactive) or 0))) / 2**20)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room.append(int(line.split()[1]) / 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(room) if room else None


def proc_mib(pid: int | str, name: str, key: str) -> float | None:
    """The ``key:`` line of ``/proc/<pid>/<name>`` (``status``, ``smaps_rollup``: a number of
    kB), in MiB; None when the process is gone or the line is not there."""
    try:
        with open(f"/proc/{pid}/{name}") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mib(pid: int) -> float:
    """A process's resident memory now, in MiB (0 when gone)."""
    return proc_mib(pid, "status", "VmRSS") or 0.0


def descendants(pid: int) -> list[int]:
    """The processes started under ``pid`` (children, theirs, ...), from ``/proc/<pid>/task/*/children``
    ([] where the kernel does not list them)."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 4096:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(x) for x in fh.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def _pss_mib(pid: int) -> float:
    """A process's proportional share of resident memory (shared pages split among the
    processes sharing them: a forked DataLoader worker's copy-on-write pages are not counted
    twice), in MiB; its RSS where ``smaps_rollup`` is not readable; 0 when gone."""
    pss = proc_mib(pid, "smaps_rollup", "Pss")
    return pss if pss is not None else rss_mib(pid)


def tree_mib(pid: int) -> float | None:
    """The memory of ``pid`` and every process under it now (DataLoader workers, a subprocess),
    in MiB, proportional shares summed; None when it has no child (its own peak says it all)."""
    kids = descendants(pid)
    if not kids:
        return None
    return sum(_pss_mib(p) for p in [pid, *kids])


class MemoryWatch:
    """One process's view: the cgroup found once, the counters read before each trial."""

    def __init__(self) -> None:
        self.cgroup = memory_cgroup()
        self.before = counters(self.cgroup)

    def start(self) -> None:
        """Read the counters as a trial starts."""
        self.before = counters(self.cgroup)

    def cause(self) -> str | None:
        """After a SIGKILL: what the trial ran out of (:func:`oom_cause`), or None."""
        return oom_cause(self.cgroup, self.before, counters(self.cgroup))

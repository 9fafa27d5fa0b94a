"""A throwaway memory cgroup (v1 where mounted, else v2) with a limit and no swap, for the
memory tests (``tests/integration/test_memory_cgroup.py``) and ``benchmarks/memory_limit.py``.
Needs root. A process is put in it by writing its pid to ``cgroup.procs`` before it starts
(``sh -c 'echo $$ > .../cgroup.procs; exec python script.py'``), so its children are too."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")

def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "creating a memory cgroup needs root"
    if (V1_ROOT / "memory.limit_in_bytes").exists() or (V1_ROOT / "cgroup.procs").exists():
        return None
    controllers = V2_ROOT / "cgroup.subtree_control"
    if controllers.exists() and "memory" in controllers.read_text().split():
        return None
    return "no memory cgroup on this machine (neither v1 /sys/fs/cgroup/memory nor v2 with memory enabled)"


class MemoryCgroup:
    """A throwaway memory cgroup (v1 where mounted, else v2) with a limit, no swap."""

    def __init__(self, limit_mib: int) -> None:
        self.v1 = V1_ROOT.is_dir()
        root = V1_ROOT if self.v1 else V2_ROOT
        self.path = root / f"hparam_joblib_test_{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        limit = str(limit_mib * 2**20)
        if self.v1:
            (self.path / "memory.limit_in_bytes").write_text(limit)
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no swapping out of the limit where the machine has swap
                memsw.write_text(limit)
        else:
            (self.path / "memory.max").write_text(limit)
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.v1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return -1

    def remove(self) -> None:
        """Move what is left to the root cgroup, then remove the cgroup (retried: the kernel
        frees it once its last process is gone)."""
        root = self.path.parent
        deadline = time.monotonic() + 30
        while self.path.exists():
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    (root / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

"""Per-host slots held by a kernel ``flock``: GPU leases, and the start-up gate of many workers.

A slot is a lock file ``<key>-<slot>.lock`` in a directory local to the host; the kernel frees
it when every process holding the file is gone, so a killed worker cannot leave one held, and
no numbering of workers is needed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hparam_joblib._flock import lock, open_lock_file, unlock


class Slot:
    """Slot ``index`` of a set, held through ``fd`` until :meth:`release`."""

    def __init__(self, fd: int, index: int) -> None:
        self.fd = fd
        self.index = index

    def release(self) -> None:
        if self.fd >= 0:
            try:
                unlock(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1


def slot_directory(kind: str) -> Path:
    """Where this host's lock files of ``kind`` live."""
    return Path(tempfile.gettempdir()) / f"hparam_joblib-{kind}"


def shared_directory(directory: Path) -> Path:
    """``directory``, made if missing, writable by every user (mode 1777, as ``/tmp``): on a
    cluster node several users' jobs take slots in it, and one user's 0755 directory would stop
    the others' first lock file (their slot keys differ, so no lock is shared by mistake)."""
    directory.mkdir(parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o7777 != 0o1777:  # ours (an older version made it 0755)
        try:
            os.chmod(directory, 0o1777)
        except OSError:
            pass
    return directory


def take_slot(
    n: int, directory: Path, key: str, should_stop: Callable[[], bool], *, first: int = 0, poll: float = 0.1
) -> Slot | None:
    """Take a free slot of ``n``; wait (polling every ``poll`` s) while all are taken.

    Slots are tried from ``first`` on (spreads the takers without relying on their numbering).

    Returns:
        The slot, or None when ``should_stop()`` became true while waiting.
    """
    return take_named_slot([f"{key}-{slot}" for slot in range(n)], directory, should_stop, first=first, poll=poll)


def take_named_slot(
    names: Sequence[str], directory: Path, should_stop: Callable[[], bool], *, first: int = 0, poll: float = 0.1
) -> Slot | None:
    """Take a free slot of ``names`` (lock files ``<name>.lock``; the slot's index is its place in
    ``names``, a name listed twice is one slot); wait (polling every ``poll`` s) while all are taken.

    Returns:
        The slot, or None when ``should_stop()`` became true while waiting.
    """
    shared_directory(directory)
    n = len(names)
    order = [(first + i) % n for i in range(n)]
    fds: dict[int, int] = {}
    try:
        for slot in order:
            if names[slot] not in [names[taken] for taken in fds]:
                fds[slot] = open_lock_file(directory / f"{names[slot]}.lock", 0o666)
        while True:
            for slot, fd in list(fds.items()):
                if lock(fd, blocking=False):
                    del fds[slot]
                    return Slot(fd, slot)
            if should_stop():
                return None
            time.sleep(poll)
    finally:
        for fd in fds.values():
            os.close(fd)

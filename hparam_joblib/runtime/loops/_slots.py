"""Per-host slots held by a kernel ``flock``: GPU leases, and the start-up gate of many workers.

A slot is a lock file ``<key>-<slot>.lock`` in a directory local to the host; the kernel frees
it when every process holding the file is gone, so a killed worker cannot leave one held, and
no numbering of workers is needed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
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


def take_slot(
    n: int, directory: Path, key: str, should_stop: Callable[[], bool], *, first: int = 0, poll: float = 0.1
) -> Slot | None:
    """Take a free slot of ``n``; wait (polling every ``poll`` s) while all are taken.

    Slots are tried from ``first`` on (spreads the takers without relying on their numbering).

    Returns:
        The slot, or None when ``should_stop()`` became true while waiting.
    """
    directory.mkdir(parents=True, exist_ok=True)
    order = [(first + i) % n for i in range(n)]
    fds = {slot: open_lock_file(directory / f"{key}-{slot}.lock", 0o666) for slot in order}
    try:
        while True:
            for slot in order:
                if lock(fds[slot], blocking=False):
                    return Slot(fds.pop(slot), slot)
            if should_stop():
                return None
            time.sleep(poll)
    finally:
        for fd in fds.values():
            os.close(fd)

"""Kernel file locks (``flock``): the SQLite writers' queue, the journal's append lock, the per-host
slots of GPU leases and the start-up gate.

The kernel drops a lock when every descriptor of its open file is closed, so a process killed
while holding one (``kill -9``) cannot leave it held. No Optuna here: slots are taken in workers.
"""

from __future__ import annotations

import fcntl
import os


def open_lock_file(path: str | os.PathLike[str], mode: int = 0o644) -> int:
    """A descriptor on the lock file ``path`` (created with ``mode``; not inherited by exec)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)


def lock(fd: int, blocking: bool = True) -> bool:
    """Take the exclusive lock on ``fd``: wait for it, or return False at once when another
    holds it and ``blocking`` is False.

    A Ctrl-C (KeyboardInterrupt) raised just after flock() returned must not leave the lock held
    for the life of this process (a notebook kernel: the next search would wait on it forever);
    unlocking a lock not taken is a no-op.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        raise
    return True


def unlock(fd: int) -> None:
    """Release the lock on ``fd`` (a no-op when it is not held)."""
    fcntl.flock(fd, fcntl.LOCK_UN)


class FileLock:
    """An exclusive lock on ``path`` through a descriptor opened once per process: a forked copy
    must not share it (a flock belongs to the open file, which a fork shares)."""

    def __init__(self, path: str, mode: int = 0o644) -> None:
        self.path = path
        self.mode = mode
        self.fd = -1
        self.pid = -1

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (see :func:`lock`); False when not ``blocking`` and another holds it."""
        if self.pid != os.getpid():
            self.fd = open_lock_file(self.path, self.mode)
            self.pid = os.getpid()
        return lock(self.fd, blocking)

    def release(self) -> None:
        """Release the lock if this process holds it (a no-op otherwise)."""
        if self.fd >= 0 and self.pid == os.getpid():
            unlock(self.fd)

    def close(self) -> None:
        """Close this process's lock file (releases the lock if held)."""
        if self.fd >= 0 and self.pid == os.getpid():
            os.close(self.fd)
        self.fd, self.pid = -1, -1

"""GPUs: which devices ``gpus: auto`` means on this machine, and one device per running trial.

Detection is read-only: it asks ``CUDA_VISIBLE_DEVICES`` first (a scheduler such as Slurm sets
it), then ``nvidia-smi -L``. No CUDA library is imported.

Leasing: before a trial starts, its worker takes a free slot of the ``gpus`` list on its own
host (a non-blocking ``flock`` per slot; see :func:`lease_device`) and the trial's process gets
``CUDA_VISIBLE_DEVICES`` set to that slot's device. Leases are per host and per study, and the
kernel frees them when the holder dies, so they hold across worker restarts, backends and
machines without any numbering of workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_SMI_TIMEOUT = 10.0


def detect_gpus() -> tuple[tuple[str, ...], str]:
    """The devices of this machine and where they were found, or ``((), why none)``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = tuple(d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1")
        if devices:
            return devices, "CUDA_VISIBLE_DEVICES"
        return (), f"CUDA_VISIBLE_DEVICES is set to {visible!r}, which lists no device"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return (), "no CUDA_VISIBLE_DEVICES and no nvidia-smi on PATH"
    try:
        out = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=_SMI_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return (), f"nvidia-smi -L failed ({err})"
    devices = tuple(str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU "))
    if not devices:
        return (), "nvidia-smi -L lists no GPU"
    return devices, "nvidia-smi -L"


# -- leases: one device per running trial, per host -------------------------------------------

_LEASE_POLL_SECONDS = 0.1


def lease_directory() -> Path:
    """Where this host's lease files live (local to the host: leases are per machine)."""
    return Path(tempfile.gettempdir()) / "hparam_joblib-gpu-leases"


def lease_key(*parts: str) -> str:
    """A short file-name-safe key for a study (its name and storage location)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class DeviceLease:
    """Slot ``slot`` of the ``gpus`` list, held through a kernel ``flock`` on a lock file.

    The kernel frees the lock when every process holding the file is gone, so a killed worker
    (and its forked trial, which inherits the descriptor while it runs) cannot leave it held.
    """

    def __init__(self, fd: int, slot: int, device: str) -> None:
        self.fd = fd
        self.slot = slot
        self.device = device

    def release(self) -> None:
        if self.fd >= 0:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = -1


def lease_device(
    gpus: Sequence[str], key: str, should_stop: Callable[[], bool], first: int = 0
) -> DeviceLease | None:
    """Take a free slot of ``gpus`` on this host for one trial; wait while all are taken.

    Each slot of the list is a lock file ``<key>-<slot>.lock`` in :func:`lease_directory`; a
    device listed twice has two slots, so two trials may share it, never more. Slots are tried
    from ``first`` on (spreads workers over the list without relying on worker numbering).

    Returns:
        The lease, or None when ``should_stop()`` became true while waiting.
    """
    directory = lease_directory()
    directory.mkdir(parents=True, exist_ok=True)
    order = [(first + i) % len(gpus) for i in range(len(gpus))]
    while True:
        for slot in order:
            fd = os.open(directory / f"{key}-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return DeviceLease(fd, slot, gpus[slot])
        if should_stop():
            return None
        time.sleep(_LEASE_POLL_SECONDS)

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

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from hparam_joblib.runtime.loops._slots import Slot, slot_directory, take_slot

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
    return slot_directory("gpu-leases")


def lease_key(*parts: str) -> str:
    """A short file-name-safe key for a study (its name and storage location)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class DeviceLease(Slot):
    """Slot ``slot`` of the ``gpus`` list (a :class:`~hparam_joblib.runtime.loops._slots.Slot`) and its device.

    The kernel frees the lock when every process holding the file is gone, so a killed worker
    (and its forked trial, which inherits the descriptor while it runs) cannot leave it held.
    """

    def __init__(self, fd: int, slot: int, device: str) -> None:
        super().__init__(fd, slot)
        self.slot = slot
        self.device = device


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
    slot = take_slot(len(gpus), lease_directory(), key, should_stop, first=first, poll=_LEASE_POLL_SECONDS)
    if slot is None:
        return None
    return DeviceLease(slot.fd, slot.index, gpus[slot.index])

"""GPUs: which devices ``gpus: auto`` means on this machine, and one device per running trial.

Detection is read-only: it asks ``CUDA_VISIBLE_DEVICES`` first (a scheduler such as Slurm sets
it), then ``nvidia-smi -L``. No CUDA library is imported.

Leasing: before a trial process starts, its worker takes a free entry of the ``gpus`` list on its
own host (a non-blocking ``flock``; see :func:`lease_device`) and the trial's process gets
``CUDA_VISIBLE_DEVICES`` set to that entry, as listed. The lock is named by the device's
*identity* on this machine, not by its place in the list (:func:`device_identities`): its GPU
UUID (the entry itself, or ``nvidia-smi``'s UUID of that index); without ``nvidia-smi``, the
Slurm job and the index when ``SLURM_JOB_ID`` is set (Slurm never gives one GPU to two jobs, and
with cgroup device constraints every job numbers its own GPUs from 0); else the index as this
process sees it. So two launches that hold different devices (``--gres=gpu:2`` jobs on one node:
``0,1`` and ``2,3``) never wait on each other, and a device listed k times in ``gpus`` runs at
most k trials of the study at once on the machine, whichever launch runs them. Leases are per
host and per study, and the kernel frees them when the holder dies, so they hold across worker
restarts, backends and machines without any numbering of workers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from hparam_joblib.runtime.loops._slots import Slot, slot_directory, take_named_slot

logger = logging.getLogger("hparam_joblib")

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


# -- identities: which physical device an entry of ``gpus`` is --------------------------------

#: ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``: ``0, GPU-b8ea3855-276c-...``.
_QUERY_LINE = re.compile(r"^\s*(\d+)\s*,\s*(GPU-[0-9A-Za-z-]+)\s*$")
#: ``nvidia-smi -L``: ``GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5c89852c-...)`` and, under a GPU in
#: MIG mode, ``  MIG 1g.5gb     Device  0: (UUID: MIG-c6d4f1ef-...)`` (``MIG-GPU-<uuid>/7/0``
#: before driver R470).
_LIST_GPU = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[0-9A-Za-z-]+)\)\s*$")
_LIST_MIG = re.compile(r"^\s+MIG .*\(UUID: (MIG-[0-9A-Za-z/-]+)\)\s*$")


def parse_smi_query(text: str) -> dict[str, str]:
    """Index → GPU UUID from ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``."""
    return {m[1]: m[2] for m in map(_QUERY_LINE.match, text.splitlines()) if m}


def parse_smi_list(text: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """(index → GPU UUID, the MIG device UUIDs) from ``nvidia-smi -L``."""
    gpus = {m[1]: m[2] for m in map(_LIST_GPU.match, text.splitlines()) if m}
    migs = tuple(m[1] for m in map(_LIST_MIG.match, text.splitlines()) if m)
    return gpus, migs


def _run_smi(*args: str) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, *args], capture_output=True, text=True, timeout=_SMI_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _smi_uuids() -> tuple[dict[str, str], tuple[str, ...]]:
    """(index → GPU UUID, every UUID incl. MIG devices) as ``nvidia-smi`` shows them on this
    machine (inside a cgroup: the job's devices, numbered from 0); empty without it. Asked once
    per process (a worker may run many loops)."""
    listed = _run_smi("-L")
    by_index, migs = parse_smi_list(listed) if listed else ({}, ())
    if not by_index:
        query = _run_smi("--query-gpu=index,uuid", "--format=csv,noheader")
        by_index = parse_smi_query(query) if query else {}
    return by_index, (*by_index.values(), *migs)


def device_identities(
    gpus: Sequence[str], smi: tuple[dict[str, str], tuple[str, ...]] | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[str, ...]:
    """The identity of each entry of ``gpus`` on this machine: what its lease lock is named by.

    * ``uuid:GPU-…`` / ``uuid:MIG-…``: the entry is a UUID (or a unique prefix of one, as CUDA
      accepts), or an index that ``nvidia-smi`` maps to one;
    * ``slurm-job-<id>:<index>``: no UUID, inside a Slurm job (``SLURM_JOB_ID``);
    * ``index:<index>``: no UUID, no Slurm job: the index as this process sees it.

    ``smi`` and ``environ`` default to this machine's ``nvidia-smi`` and ``os.environ`` (tests
    pass them).
    """
    by_index, uuids = _smi_uuids() if smi is None else smi
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID", "").strip()
    identities = []
    for entry in gpus:
        if entry[:4].upper() in ("GPU-", "MIG-"):
            matches = [u for u in uuids if u.lower().startswith(entry.lower())]
            identities.append("uuid:" + (matches[0] if len(matches) == 1 else entry))
        elif entry in by_index:
            identities.append("uuid:" + by_index[entry])
        elif job:
            identities.append(f"slurm-job-{job}:{entry}")
        else:
            identities.append(f"index:{entry}")
    return tuple(identities)


# -- leases: one device per running trial, per host -------------------------------------------

_LEASE_POLL_SECONDS = 0.1


def lease_directory() -> Path:
    """Where this host's lease files live (local to the host: leases are per machine)."""
    return slot_directory("gpu-leases")


def lease_key(*parts: str) -> str:
    """A short file-name-safe key for a study (its name and storage location)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class DeviceLease(Slot):
    """Entry ``slot`` of the ``gpus`` list (a :class:`~hparam_joblib.runtime.loops._slots.Slot`),
    its device as listed (the trial's ``CUDA_VISIBLE_DEVICES``) and the identity it is leased by.

    The kernel frees the lock when every process holding the file is gone, so a killed worker
    (and its forked trial, which inherits the descriptor while it runs) cannot leave it held.
    """

    def __init__(self, fd: int, slot: int, device: str, identity: str) -> None:
        super().__init__(fd, slot)
        self.slot = slot
        self.device = device
        self.identity = identity


def lease_names(key: str, identities: Sequence[str]) -> list[str]:
    """The lock file name of each entry: ``<key>-<identity digest>-<k>``, k counting the earlier
    entries of the same device (a device listed twice has two names, so two trials may share
    it, never more; two launches listing it once each share one name)."""
    seen: dict[str, int] = {}
    names = []
    for identity in identities:
        k = seen.get(identity, 0)
        seen[identity] = k + 1
        names.append(f"{key}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}-{k}")
    return names


def lease_device(
    gpus: Sequence[str], key: str, should_stop: Callable[[], bool], first: int = 0
) -> DeviceLease | None:
    """Take a free entry of ``gpus`` on this host for one trial process; wait while all are taken.

    Each entry is a lock file in :func:`lease_directory` named by the study ``key``, the device's
    identity (:func:`device_identities`) and its occurrence in the list (:func:`lease_names`).
    Entries are tried from ``first`` on (spreads workers over the list without relying on
    worker numbering).

    Returns:
        The lease, or None when ``should_stop()`` became true while waiting.
    """
    identities = device_identities(gpus)
    logger.debug("gpus %s leased as %s", list(gpus), list(identities))
    slot = take_named_slot(lease_names(key, identities), lease_directory(), should_stop, first=first,
                           poll=_LEASE_POLL_SECONDS)
    if slot is None:
        return None
    return DeviceLease(slot.fd, slot.index, gpus[slot.index], identities[slot.index])

"""GPUs: which devices ``gpus: auto`` means on this machine.

Read-only: asks ``CUDA_VISIBLE_DEVICES`` first (a scheduler such as Slurm sets it), then
``nvidia-smi -L``. No CUDA library is imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess

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

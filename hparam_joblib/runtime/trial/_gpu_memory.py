"""A trial's peak GPU memory, where the machine can tell (#21).

Two views; PyTorch's wins where it has one:

* **In the trial process** (:func:`reset_torch_peak`, :func:`torch_peak_mib`): when the user's
  code has initialised CUDA through PyTorch, the most memory its tensors took during the trial
  (``torch.cuda.max_memory_allocated``, reset before each trial): exact and free, and what the
  configuration needs, not what the caching allocator kept from an earlier, bigger trial in
  the same warm process.
* **From the worker** (:class:`DeviceMemorySampler`), for any framework (JAX, TensorFlow,
  XGBoost, CuPy): the device memory the driver says the trial process uses (its CUDA context
  included), sampled while the trial runs: through NVML (``pip install nvidia-ml-py``; a
  sample costs well under a millisecond) or else ``nvidia-smi --query-compute-apps`` (a
  process start, so at most every :data:`SMI_EVERY_SECONDS`). A peak shorter than the sampling
  interval can be missed; PyTorch's own peak cannot.

Nothing here runs without a GPU: no NVML library, no ``nvidia-smi``, no CUDA initialised → None.
Imports no Optuna (the trial side).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("hparam_joblib")

#: ``nvidia-smi`` starts a process per sample: not more often than this.
SMI_EVERY_SECONDS = 2.0
_MIB = 2**20


def _torch_cuda() -> Any | None:
    """``torch.cuda`` when the trial's code imported torch and initialised CUDA, else None."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():
            return cuda
    except Exception:  # noqa: BLE001 - a broken CUDA install must never fail a trial
        return None
    return None


def reset_torch_peak() -> None:
    """Before a trial: PyTorch's peak memory counters start again (devices already in use)."""
    cuda = _torch_cuda()
    if cuda is None:
        return
    try:
        for device in range(cuda.device_count()):
            cuda.reset_peak_memory_stats(device)
    except Exception as err:  # noqa: BLE001 - the peak is then the process's, not the trial's
        logger.debug("could not reset PyTorch's peak memory (%s)", err)


def torch_peak_mib() -> float | None:
    """After a trial: the most GPU memory PyTorch's tensors took during it, over the devices
    this process sees, in MiB (None: PyTorch never initialised CUDA here)."""
    cuda = _torch_cuda()
    if cuda is None:
        return None
    try:
        return float(sum(cuda.max_memory_allocated(d) for d in range(cuda.device_count()))) / _MIB
    except Exception:  # noqa: BLE001
        return None


def _nvml() -> Any | None:
    """The ``pynvml`` module (nvidia-ml-py), initialised, or None (not installed, no driver)."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError (no driver, no device)
        return None
    return nvml


class DeviceMemorySampler:
    """The device memory of one process, sampled from outside it (NVML, else ``nvidia-smi``).

    Made only for a trial process that was given a GPU (``CUDA_VISIBLE_DEVICES`` set to a
    device): :meth:`for_env` returns None otherwise, and when neither tool is there.
    """

    def __init__(self, nvml: Any | None, smi: str | None) -> None:
        self.nvml = nvml
        self.smi = smi
        self.peak: float | None = None
        self._last_smi = 0.0

    @classmethod
    def for_env(cls, env: Mapping[str, str]) -> DeviceMemorySampler | None:
        visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
        if not visible or visible == "-1":
            return None
        nvml = _nvml()
        smi = None if nvml is not None else shutil.which("nvidia-smi")
        if nvml is None and smi is None:
            return None
        return cls(nvml, smi)

    def start(self) -> None:
        """A trial starts: its peak starts again."""
        self.peak = None
        self._last_smi = 0.0

    def sample(self, pid: int) -> None:
        """Read ``pid``'s device memory now (throttled for ``nvidia-smi``) into :attr:`peak`."""
        if self.nvml is None:
            now = time.monotonic()
            if now - self._last_smi < SMI_EVERY_SECONDS:
                return
            self._last_smi = now
        used = self._used(pid)
        if used is not None:
            self.peak = max(self.peak or 0.0, used)

    def _used(self, pid: int) -> float | None:
        if self.nvml is not None:
            return _nvml_used(self.nvml, pid)
        if self.smi is not None:
            return _smi_used(self.smi, pid)
        return None


def _nvml_used(nvml: Any, pid: int) -> float | None:
    """``pid``'s device memory over every device, in MiB, from NVML (None: not on any)."""
    total = None
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(proc, "usedGpuMemory", None)
                if proc.pid == pid and isinstance(used, int):
                    total = (total or 0.0) + used / _MIB
    except Exception:  # noqa: BLE001 - NVMLError: a device lost, permissions
        return None
    return total


def parse_smi(text: str, pid: int) -> float | None:
    """``pid``'s MiB in ``nvidia-smi --query-compute-apps=pid,used_memory
    --format=csv,noheader,nounits`` output (one ``pid, MiB`` line per process and device)."""
    total = None
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        try:
            used = float(fields[1])
        except ValueError:  # "[N/A]" (no permission to see it)
            continue
        if int(fields[0]) == pid:
            total = (total or 0.0) + used
    return total


def _smi_used(smi: str, pid: int) -> float | None:
    try:
        done = subprocess.run(
            [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_smi(done.stdout, pid) if done.returncode == 0 else None


def device_total_mib(devices: list[str]) -> float | None:
    """The smallest total memory of ``devices`` (ids as ``gpus`` lists them), in MiB, from NVML
    or ``nvidia-smi`` (None: neither can tell)."""
    if not devices:
        return None
    nvml = _nvml()
    if nvml is not None:
        try:
            totals = [nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(int(d))).total / _MIB
                      for d in devices if str(d).isdigit()]
            return min(totals) if totals else None
        except Exception:  # noqa: BLE001
            return None
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    totals = []
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] in {str(d) for d in devices}:
            try:
                totals.append(float(fields[1]))
            except ValueError:
                continue
    return min(totals) if totals else None

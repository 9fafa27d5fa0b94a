"""Peak GPU memory per trial (#21): the parts that run without a GPU here; the real device is
tested in tests/integration/test_gpu_memory.py where CUDA is there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hparam_joblib.runtime.trial import _gpu_memory
from hparam_joblib.runtime.trial._gpu_memory import DeviceMemorySampler, parse_smi, torch_peak_mib

# ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`` on a machine
# with two devices: one process on both, one we may not see.
SMI = """12345, 1530
777, [N/A]
12345, 512
9, 80
"""


def test_nvidia_smi_lines_sum_one_process_over_its_devices() -> None:
    assert parse_smi(SMI, 12345) == 2042.0
    assert parse_smi(SMI, 9) == 80.0
    assert parse_smi(SMI, 777) is None  # not readable: unknown, never 0
    assert parse_smi(SMI, 4) is None
    assert parse_smi("", 12345) is None
    assert parse_smi("No running processes found\n", 12345) is None


def test_no_sampler_for_a_process_without_a_gpu() -> None:
    assert DeviceMemorySampler.for_env({}) is None
    assert DeviceMemorySampler.for_env({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert DeviceMemorySampler.for_env({"CUDA_VISIBLE_DEVICES": "-1"}) is None


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists(),
                    reason="this machine has an NVIDIA driver")
def test_no_sampler_where_neither_nvml_nor_nvidia_smi_can_tell() -> None:
    """nvidia-ml-py installed (the dev extra) but no driver: NVML cannot start, so no sampler."""
    assert DeviceMemorySampler.for_env({"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert _gpu_memory.device_total_mib(["0"]) is None


def test_pytorch_on_the_cpu_reports_no_gpu_peak() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    torch.ones(1000).sum()
    assert torch_peak_mib() is None
    assert _gpu_memory.device_total_mib([]) is None

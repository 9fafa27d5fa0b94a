"""``gpus`` and ``n_jobs``: the devices trials are pinned to, and how many trials run at once.

What ``gpus: auto`` means is asked of a detector that the caller passes (the launcher passes the
runtime's); this module runs no subprocess itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hparam_joblib.config._checker import Checker, as_int

#: Answers ``gpus: auto``: (the devices found, where they were found), or ``((), why none)``.
GpuDetector = Callable[[], tuple[tuple[str, ...], str]]


def validate_devices(
    raw: Mapping[str, Any], cpu_count: int, check: Checker, detect_gpus: GpuDetector | None = None
) -> tuple[tuple[str, ...], int]:
    """``gpus`` then ``n_jobs`` (default: one trial per listed device); returns (gpus, n_jobs)."""
    gpus = validate_gpus(raw.get("gpus"), check, detect_gpus)
    n_jobs_raw = raw.get("n_jobs", len(gpus) or 1)
    if n_jobs_is_auto(raw):  # the devices, else the cores; fewer at once when memory is short
        return gpus, len(gpus) or cpu_count
    n_jobs = as_int(n_jobs_raw)
    if n_jobs is None or n_jobs == 0 or n_jobs < -cpu_count:
        raise check.fail(
            "n_jobs",
            f"must be a positive integer, -1 for all {cpu_count} cores, or auto, got {n_jobs_raw!r}",
        )
    if n_jobs < 0:  # joblib's convention: -1 all cores, -2 all but one, ...
        n_jobs = cpu_count + 1 + n_jobs
    one_machine = str(raw.get("backend") or "loky").strip().lower() != "dask" or str(
        raw.get("dask_scheduler") or "local"
    ).strip() == "local"
    if gpus and n_jobs > len(gpus) and one_machine:  # on a cluster, gpus lists each machine's devices
        raise check.fail(
            "n_jobs",
            f"{n_jobs} trials would run at once but gpus lists {len(gpus)} device(s) "
            f"{list(gpus)}; lower n_jobs, or list a device twice to share it",
            related=("gpus",),
        )
    return gpus, n_jobs


def n_jobs_is_auto(raw: Mapping[str, Any]) -> bool:
    """``n_jobs: auto``: start from the cores (or the devices) and run fewer trials at once when
    memory would not hold another."""
    value = raw.get("n_jobs")
    return isinstance(value, str) and value.strip().lower() == "auto"


def validate_gpus(value: Any, check: Checker, detect_gpus: GpuDetector | None = None) -> tuple[str, ...]:
    """``gpus:`` as device ids (strings, as CUDA_VISIBLE_DEVICES takes them); empty if unset."""
    if value is None:
        return ()
    if isinstance(value, str) and value.strip().lower() == "auto":
        found, why = (detect_gpus or _detect_on_this_machine)()
        if not found:
            raise check.fail("gpus", f"auto found no GPU on this machine ({why}); list the devices, e.g. [0, 1]")
        return found
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise check.fail("gpus", f"must be 'auto' or a non-empty list of device ids such as [0, 1], got {value!r}")
    devices: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise check.fail("gpus", f"device ids must be integers >= 0 or GPU UUIDs, got {item!r}")
        text = str(item).strip()
        if (isinstance(item, int) and item < 0) or not text or "," in text:
            raise check.fail("gpus", f"device ids must be integers >= 0 or GPU UUIDs, got {item!r}")
        devices.append(text)
    return tuple(devices)


def _detect_on_this_machine() -> tuple[tuple[str, ...], str]:
    """The default detector, for callers that pass none (tests, scripts calling ``validate``)."""
    # Imported on use: config imports no runtime code; the launcher passes the detector itself.
    from hparam_joblib.runtime.loops._gpus import detect_gpus

    return detect_gpus()

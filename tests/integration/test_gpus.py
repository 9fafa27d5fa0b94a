"""``gpus:`` without a GPU: each trial records the CUDA_VISIBLE_DEVICES it saw and when it ran;
trials that overlap in time never share a device slot (a device listed k times is used by at most
k trials at once), and every value comes from the list. On loky and on Dask."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Project, search_config, states, trials
from tests.integration.test_dask import SCALE_SCRIPT, max_overlap

#: Whole searches in real processes (kill loops, clusters, servers): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow


def check_devices(rows: list[dict], gpus: list[str]) -> None:
    allowed = Counter(gpus)
    assert {r["gpu"] for r in rows} <= set(gpus), rows
    for device, k in allowed.items():
        on_it = [r for r in rows if r["gpu"] == device]
        assert max_overlap(on_it) <= k, (device, on_it)


@pytest.mark.parametrize("backend", ["loky", "dask"])
@pytest.mark.parametrize("gpus", [["0", "1"], ["0", "0", "1"]], ids=["distinct", "repeated"])
def test_concurrent_trials_never_share_a_device(project: Project, backend: str, gpus: list[str]) -> None:
    if backend == "dask":
        pytest.importorskip("distributed")
    project.script.write_text(SCALE_SCRIPT)
    record = project.root / "record.jsonl"
    n_trials = 18
    project.write_config(search_config(
        n_jobs=None, n_trials=n_trials, backend=backend, gpus=json.dumps(gpus), sleep="[0.05, 0.4]", record=record,
    ))  # n_jobs defaults to len(gpus)
    done = project.run(timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(rows) == n_trials
    check_devices(rows, gpus)
    assert max_overlap(rows) >= 2  # the test would prove nothing if nothing ran at once
    db = project.db("exp_t")
    assert states(db) == {"COMPLETE": n_trials}
    stored = {t["number"]: t["user_attrs"].get("gpu") for t in trials(db)}
    assert all(stored[r["trial"]] == r["gpu"] for r in rows)  # recorded as user attr "gpu" too
    # Each trial process is pinned to one device for its whole life (its CUDA context is reused).
    by_process: dict[int, set[str]] = {}
    for t in trials(db):
        by_process.setdefault(t["user_attrs"]["trial_pid"], set()).add(t["user_attrs"]["gpu"])
    assert all(len(devices) == 1 for devices in by_process.values()), by_process
    # One warm process per worker, none replaced. (<=: on a loaded machine the last loop may pass
    # the start-up gate after the others have taken every trial; it then runs none.)
    assert 2 <= len(by_process) <= len(gpus), by_process
    usage = Counter(r["gpu"] for r in rows)
    print(f"{backend} gpus={gpus}: {n_trials} trials, device use {dict(usage)}, "
          f"peak concurrency {max_overlap(rows)}, no slot shared")


def test_leases_are_per_host_files_freed_by_the_kernel(tmp_path: Path) -> None:
    """A slot held by one process is skipped by another; released slots are taken again; a process
    that dies holding a slot frees it (the kernel drops its flock)."""
    import multiprocessing
    import os
    import signal

    from hparam_joblib.runtime.loops._gpus import lease_device

    key = f"test-{os.getpid()}"
    first = lease_device(["7", "7", "8"], key, lambda: False)
    second = lease_device(["7", "7", "8"], key, lambda: False)
    third = lease_device(["7", "7", "8"], key, lambda: False)
    assert first and second and third
    assert sorted([first.slot, second.slot, third.slot]) == [0, 1, 2]
    assert lease_device(["7", "7", "8"], key, lambda: True) is None  # all taken: waits, until told to stop
    second.release()
    again = lease_device(["7", "7", "8"], key, lambda: False)
    assert again and again.slot == second.slot
    for held in (first, third, again):
        held.release()

    ready = multiprocessing.get_context("fork").Event()

    def hold() -> None:
        lease_device(["9"], key + "-dead", lambda: False)
        ready.set()
        signal.pause()

    child = multiprocessing.get_context("fork").Process(target=hold)
    child.start()
    assert ready.wait(10)
    assert lease_device(["9"], key + "-dead", lambda: True) is None
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(10)
    freed = lease_device(["9"], key + "-dead", lambda: False)
    assert freed and freed.device == "9"
    freed.release()

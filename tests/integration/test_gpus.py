"""``gpus:`` without a GPU: each trial records the CUDA_VISIBLE_DEVICES it saw and when it ran;
trials that overlap in time never share a device slot (a device listed k times is used by at most
k trials at once), and every value comes from the list. On loky and on Dask. Two launches of one
study that hold different devices (0,1 and 2,3; or both 0,1 under cgroups, told apart by
nvidia-smi's UUIDs or by their SLURM jobs) run trials at once; two that hold the same share them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Project, child_env, search_config, states, trials
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


#: Each trial records its launch, its CUDA_VISIBLE_DEVICES and when it ran; a trial waits until a
#: trial of every launch has started (once at most ``wait`` s: then none waits again), so that
#: launches that could run at once are seen running at once even on a loaded machine, and a
#: launch kept waiting shows as running none.
TWO_LAUNCH_SCRIPT = '''
import json, os, time
from hparam_joblib import current_trial_number, hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    start = time.time()
    launch = os.environ["TEST_LAUNCH"]
    started = config["record"] + ".started"
    with open(started, "a") as fh:
        fh.write(launch + "\\n")
    while not os.path.exists(started + ".gave-up"):
        with open(started) as fh:
            if len(set(fh.read().split())) >= 2:
                break
        if time.time() > start + config["wait"]:  # once: the other launch never ran a trial
            open(started + ".gave-up", "w").close()
        time.sleep(0.05)
    time.sleep(0.3)
    line = {"launch": launch, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start,
            "end": time.time(), "trial": current_trial_number()}
    with open(config["record"], "a") as fh:
        fh.write(json.dumps(line) + "\\n")
    return config["x"]

if __name__ == "__main__":
    train()
'''

#: A stand-in for ``nvidia-smi`` on a node whose cgroup shows each job its own two GPUs as 0, 1.
FAKE_SMI = '''#!/bin/sh
[ "$1" = "-L" ] || exit 6
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-{job}0000000-0000-0000-0000-000000000000)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-{job}1111111-1111-1111-1111-111111111111)"
'''


def _two_launches(project: Project, visible: tuple[str, str], extra: tuple[dict[str, str], dict[str, str]],
                  wait: float) -> list[dict]:
    """Two launches of one study (``gpus: auto``, n_jobs 2 each), started together, each seeing
    its own CUDA_VISIBLE_DEVICES (and environment ``extra``); returns the trials' records."""
    project.script.write_text(TWO_LAUNCH_SCRIPT)
    record = project.root / "record.jsonl"
    project.write_config(search_config(n_jobs=None, n_trials=12, gpus="auto", record=record, wait=wait,
                                       sampler="{type: random}"))
    procs = []
    for i, (devices, more) in enumerate(zip(visible, extra)):
        env = child_env()
        env.pop("SLURM_JOB_ID", None)
        env.update({"CUDA_VISIBLE_DEVICES": devices, "TEST_LAUNCH": f"L{i}", **more})
        procs.append(subprocess.Popen([sys.executable, str(project.script)], cwd=project.root, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert states(project.db("exp_t")) == {"COMPLETE": 12}
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(rows) == 12
    assert os.path.exists(str(record) + ".started")
    return rows


def _launches_overlap(rows: list[dict]) -> bool:
    """Whether a trial of one launch ran while a trial of the other did."""
    return any(a["launch"] != b["launch"] and a["start"] < b["end"] and b["start"] < a["end"]
               for a in rows for b in rows)


@pytest.mark.parametrize("case", ["different-lists", "cgroup-uuids", "cgroup-slurm-jobs"])
def test_launches_holding_different_devices_run_at_once(project: Project, case: str) -> None:
    """Two launches of one study that hold different devices (Slurm's ``--gres=gpu:2`` jobs on one
    node) never wait on each other's leases: 0,1 and 2,3 as on a node without device cgroups; both
    0,1 with nvidia-smi showing each its own UUIDs (cgroups); both 0,1 without nvidia-smi, in two
    Slurm jobs. No device runs two trials at once."""
    if case == "different-lists":
        visible, extra = ("0,1", "2,3"), ({}, {})
        physical = {("L0", "0"): "0", ("L0", "1"): "1", ("L1", "2"): "2", ("L1", "3"): "3"}
    elif case == "cgroup-uuids":
        visible = ("0,1", "0,1")
        extra_l: list[dict[str, str]] = []
        for job in ("a", "b"):
            bin_dir = project.root / f"bin-{job}"
            bin_dir.mkdir()
            (bin_dir / "nvidia-smi").write_text(FAKE_SMI.format(job=job))
            (bin_dir / "nvidia-smi").chmod(0o755)
            extra_l.append({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
        extra = (extra_l[0], extra_l[1])
        physical = {(f"L{i}", d): f"{i}/{d}" for i in (0, 1) for d in ("0", "1")}
    else:
        visible, extra = ("0,1", "0,1"), ({"SLURM_JOB_ID": "900041"}, {"SLURM_JOB_ID": "900042"})  # ids no test cluster reaches
        physical = {(f"L{i}", d): f"{i}/{d}" for i in (0, 1) for d in ("0", "1")}
    rows = _two_launches(project, visible, extra, wait=60)
    per_launch = Counter(r["launch"] for r in rows)
    assert set(per_launch) == {"L0", "L1"}, per_launch  # before #19: L1 waited on L0's slots, ran none
    for device in set(physical.values()):
        on_it = [r for r in rows if physical[(r["launch"], r["gpu"])] == device]
        assert max_overlap(on_it) <= 1, (device, on_it)
    peak = max_overlap(rows)
    assert _launches_overlap(rows) and peak >= 3, rows  # trials of both launches ran at once
    print(f"{case}: trials per launch {dict(per_launch)}, peak concurrency {peak}, "
          f"devices {dict(Counter((r['launch'], r['gpu']) for r in rows))}")


def test_launches_holding_the_same_devices_share_them(project: Project) -> None:
    """Two launches that see the same devices 0,1 (no nvidia-smi, no Slurm: the index is the
    identity) still run at most one trial per device, whichever launch runs it (trials of both
    launches wait for each other at most once, ``wait`` 0)."""
    rows = _two_launches(project, ("0,1", "0,1"), ({"PATH": "/usr/bin:/bin"}, {"PATH": "/usr/bin:/bin"}),
                         wait=0)
    for device in ("0", "1"):
        assert max_overlap([r for r in rows if r["gpu"] == device]) <= 1, rows
    assert max_overlap(rows) <= 2

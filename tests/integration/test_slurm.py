"""Searches submitted to a real SLURM (#19): a single-node cluster started by
``scripts/slurm_throwaway.sh`` (Debian's slurm-wlm + munge, four fake GPUs as gres) and a throwaway
PostgreSQL (``pg_url``), every search through ``sbatch``, every fact read from the database or from
files the jobs and trials write (accounting is off: each job writes its exit status to a file).

* an array of the same command: exit statuses, exact budget, distinct configurations, trials per
  launch;
* two ``--gres=gpu:2`` jobs of one study: the devices each trial saw, peak concurrency, no device
  used by two trials at once, both jobs ran trials (and the wall time of one job alone);
* preemption: ``scancel --signal=TERM --full`` (every process) and ``--signal=USR1 --batch`` (the
  batch shell, which forwards it to the launcher, as ``#SBATCH --signal=B:USR1@120`` does): nothing
  left RUNNING, interrupted trials FAIL with a reason, the exit statuses; the array resubmitted
  finishes the budget exactly;
* docs/clusters.md's sbatch script, as documented: it requeues itself on USR1 until the budget is
  spent.

Needs root (slurmd runs the jobs) and slurm-wlm + munge (installed with apt-get when missing).
Skipped with the reason otherwise, unless ``HPARAM_JOBLIB_REQUIRE_SLURM=1`` (``.ci/run``): then
they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._pgserver import free_port
from tests.conftest import REPO, Project, child_env, search_config, wait_for
from tests.integration.test_dask import max_overlap

pytestmark = pytest.mark.slow

STARTER = REPO / "scripts" / "slurm_throwaway.sh"

#: How long a test waits for its jobs to leave the queue (a loaded 2-core machine).
QUEUE_TIMEOUT = 600.0


def _unavailable(why: str) -> None:
    if os.environ.get("HPARAM_JOBLIB_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required (HPARAM_JOBLIB_REQUIRE_SLURM=1) but {why}")
    pytest.skip(f"no SLURM for the tests: {why}")


@pytest.fixture(scope="session")
def slurm() -> Iterator[dict[str, str]]:
    """A running single-node SLURM for the session: the environment its commands need."""
    if os.geteuid() != 0:
        _unavailable("the tests are not run as root (slurmd must run the jobs as their users)")
    if not (shutil.which("slurmctld") and shutil.which("munged")) and not shutil.which("apt-get"):
        _unavailable("slurm-wlm/munge are not installed and there is no apt-get to install them")
    root = Path(tempfile.mkdtemp(prefix="hj-slurm-"))
    env = {**os.environ, "SLURM_THROWAWAY_PORT": str(_two_free_ports())}
    try:
        started = subprocess.run(["bash", str(STARTER), "start", str(root)], check=False,
                                 capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(STARTER), "stop", str(root)], check=False, timeout=120)
        _unavailable("scripts/slurm_throwaway.sh start did not finish in 900 s")
    if started.returncode != 0:
        _unavailable(f"scripts/slurm_throwaway.sh start failed: {started.stderr[-2000:]}")
    env = child_env()
    env["SLURM_CONF"] = started.stdout.strip().split("=", 1)[1]
    for name in [n for n in env if n.startswith(("SLURM_", "SBATCH_")) and n != "SLURM_CONF"]:
        del env[name]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    yield env
    subprocess.run(["bash", str(STARTER), "stop", str(root)], check=False, capture_output=True, timeout=180)


def _two_free_ports() -> int:
    """A port that is free, and the next one too (slurmctld's and slurmd's)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    return 6817


#: The batch script: the launcher in the background, so that the shell forwards TERM/USR1 to it
#: (a signal SLURM sends to the batch shell alone) and writes its exit status when it ends.
JOB = """#!/bin/bash
cd {root}
{python} {script} &
child=$!
trap 'kill -TERM $child 2>/dev/null' TERM
trap 'kill -USR1 $child 2>/dev/null' USR1
wait $child; rc=$?
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
echo $rc > {root}/exit/${{SLURM_JOB_ID}}
"""

#: Each trial records its Slurm job, its devices and when it ran; ``sleep`` seconds of work.
SCRIPT = '''
import json, os, time
from hparam_joblib import current_trial_number, hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    start = time.time()
    time.sleep(config["sleep"])
    line = {"job": os.environ.get("SLURM_JOB_ID"), "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(),
            "trial": current_trial_number()}
    with open(config["record"], "a") as fh:
        fh.write(json.dumps(line) + "\\n")
    return (config["x"] - 0.25) ** 2

if __name__ == "__main__":
    train()
'''


def sbatch(project: Project, env: dict[str, str], *args: str) -> str:
    """Submit the project's script as a batch job; returns the job id."""
    (project.root / "exit").mkdir(exist_ok=True)
    job = project.root / "job.sh"
    job.write_text(JOB.format(root=project.root, python=sys.executable, script=project.script))
    out = subprocess.run(["sbatch", "--parsable", "-o", str(project.root / "slurm-%j.out"), *args, str(job)],
                         check=True, capture_output=True, text=True, env=env, timeout=60)
    return out.stdout.strip().split(";")[0]


def queued(env: dict[str, str], job: str) -> list[str]:
    """The job's tasks still in the queue (pending or running), with their states."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], check=False, capture_output=True,
                         text=True, env=env, timeout=60)
    return out.stdout.split("\n")[:-1] if out.returncode == 0 else []


def wait_gone(env: dict[str, str], *jobs: str) -> float:
    """Wait until none of ``jobs`` is in the queue; returns when that was (time.time())."""
    wait_for(lambda: not any(queued(env, job) for job in jobs), timeout=QUEUE_TIMEOUT, poll=0.5)
    return time.time()


def exit_statuses(project: Project) -> dict[str, int]:
    """Each finished job's (or array task's) exit status, by SLURM_JOB_ID."""
    return {p.name: int(p.read_text()) for p in sorted((project.root / "exit").iterdir())}


def load(url: str) -> Any:
    import optuna

    return optuna.load_study(study_name="exp_t", storage=url)


def counts(url: str) -> dict[str, int]:
    return dict(Counter(t.state.name for t in load(url).get_trials(deepcopy=False)))


def records(project: Project) -> list[dict[str, Any]]:
    path = project.root / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_array_of_one_command_runs_the_budget_once(project: Project, slurm: dict[str, str], pg_url: str) -> None:
    """``sbatch --array=0-3`` of the same command, n_jobs 1, ``seed: 7``, 24 trials on PostgreSQL:
    every task exits 0, exactly 24 COMPLETE, 24 distinct configurations."""
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_jobs=1, n_trials=24, storage=pg_url, seed=7, sleep=0.3,
                                       record=project.root / "record.jsonl"))
    job = sbatch(project, slurm, "--array=0-3", "-c", "1")
    started = time.time()
    ended = wait_gone(slurm, job)
    statuses = exit_statuses(project)
    trials = load(pg_url).get_trials(deepcopy=False)
    per_launch = Counter(t.system_attrs["hparam_joblib:owner"]["run"] for t in trials)
    hosts = {t.system_attrs["hparam_joblib:owner"]["host"] for t in trials}
    distinct = len({tuple(sorted(t.params.items())) for t in trials})
    per_task = Counter(r["task"] for r in records(project))
    print(f"array: exit statuses {statuses}, states {counts(pg_url)}, {distinct} distinct configurations "
          f"of {len(trials)}, trials per launch {sorted(per_launch.values(), reverse=True)} "
          f"(per array task {dict(sorted(per_task.items()))}), hosts {hosts}, {ended - started:.1f} s")
    assert len(statuses) == 4 and set(statuses.values()) == {0}, statuses
    assert counts(pg_url) == {"COMPLETE": 24}
    assert sum(per_launch.values()) == 24 and len(per_launch) >= 2, per_launch
    assert hosts == {socket.gethostname()}
    assert distinct == 24, f"{distinct} distinct configurations of 24: launches sampled the same seed stream"


GPU_CONFIG: dict[str, object] = {"n_jobs": None, "gpus": "auto", "sampler": "{type: random}", "sleep": 1.5}


def test_two_gpu_jobs_on_one_node_use_their_own_devices(project: Project, slurm: dict[str, str],
                                                        pg_url: str) -> None:
    """Two jobs with ``--gres=gpu:2`` each (SLURM gives them CUDA_VISIBLE_DEVICES 0,1 and 2,3),
    ``gpus: auto``, one study: both run trials at once, each on its own devices, none shared."""
    project.script.write_text(SCRIPT)
    record = project.root / "record.jsonl"
    project.write_config(search_config(n_trials=24, storage=pg_url, record=record, **GPU_CONFIG))
    started = time.time()
    jobs = [sbatch(project, slurm, "--gres=gpu:2", "-c", "1") for _ in range(2)]
    wait_gone(slurm, *jobs)
    rows = records(project)
    statuses = exit_statuses(project)
    first, last = min(r["start"] for r in rows), max(r["end"] for r in rows)
    seen = {job: sorted({r["gpu"] for r in rows if r["job"] == job}) for job in jobs}
    per_job = Counter(r["job"] for r in rows)
    peak = max_overlap(rows)
    solo = _one_job_alone(project, slurm, pg_url)
    print(f"gpus: devices per job {seen}, trials per job {dict(per_job)}, peak concurrent trials {peak}, "
          f"first to last trial {last - first:.1f} s (one job alone: {solo:.1f} s), "
          f"submit to end {time.time() - started - solo:.1f} s, exit statuses {statuses}")
    assert set(statuses.values()) == {0}, statuses
    assert counts(pg_url) == {"COMPLETE": 24}
    assert len(rows) == 24
    assert all(per_job[job] > 0 for job in jobs), per_job  # before #19 the second job ran none
    assert {frozenset(devices) for devices in seen.values()} == {frozenset({"0", "1"}), frozenset({"2", "3"})}
    for device in ("0", "1", "2", "3"):
        assert max_overlap([r for r in rows if r["gpu"] == device]) <= 1, (device, rows)
    assert peak >= 3, rows  # trials of both jobs ran at once


def _one_job_alone(project: Project, slurm: dict[str, str], pg_url: str) -> float:
    """The same search (another study) by one ``--gres=gpu:2`` job: first to last trial, in s."""
    alone = Project(project.root / "alone")
    alone.root.mkdir()
    alone.script.write_text(SCRIPT)
    url = pg_url  # the same database, another study (tag)
    alone.write_config(search_config(n_trials=24, storage=url, tag="alone", record=alone.root / "record.jsonl",
                                     **GPU_CONFIG))
    wait_gone(slurm, sbatch(alone, slurm, "--gres=gpu:2", "-c", "1"))
    rows = records(alone)
    assert len(rows) == 24, rows
    return max(r["end"] for r in rows) - min(r["start"] for r in rows)


@pytest.mark.parametrize(("signal_name", "target"), [("TERM", "--full"), ("USR1", "--batch")],
                         ids=["TERM-every-process", "USR1-batch-shell"])
def test_preempted_array_leaves_nothing_running_and_resumes(project: Project, slurm: dict[str, str], pg_url: str,
                                                            signal_name: str, target: str) -> None:
    """``scancel --signal=...`` of a running array: no RUNNING trial left, interrupted trials FAIL
    with a reason, each task's exit status recorded; the array submitted again finishes the
    budget exactly."""
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_jobs=2, n_trials=16, storage=pg_url, sleep=4.0, heartbeat_interval=1,
                                       record=project.root / "record.jsonl"))
    job = sbatch(project, slurm, "--array=0-1", "-c", "1")
    wait_for(lambda: counts(pg_url).get("RUNNING", 0) >= 3, timeout=QUEUE_TIMEOUT, poll=0.2)
    before = counts(pg_url)
    signalled = time.time()
    subprocess.run(["scancel", f"--signal={signal_name}", target, job], check=True, env=slurm, timeout=60)
    ended = wait_gone(slurm, job)
    statuses = exit_statuses(project)
    after = counts(pg_url)
    failed = [t for t in load(pg_url).get_trials(deepcopy=False) if t.state.name == "FAIL"]
    reasons = Counter(t.user_attrs.get("failure_reason", "") for t in failed)
    again = sbatch(project, slurm, "--array=0-1", "-c", "1")
    wait_gone(slurm, again)
    final = counts(pg_url)
    print(f"{signal_name} {target}: states {before} when signalled, {after} after "
          f"({ended - signalled:.1f} s to leave the queue), exit statuses {statuses}, "
          f"reasons {dict(reasons)}; resubmitted: {final}, exit statuses {exit_statuses(project)}")
    assert "RUNNING" not in after, after
    assert failed and all(reason for reason in reasons), reasons
    assert len(statuses) == 2, statuses  # both tasks recorded how they ended
    assert "RUNNING" not in final and final.get("COMPLETE", 0) + final.get("PRUNED", 0) == 16, final
    assert all(status == 0 for name, status in exit_statuses(project).items() if name not in statuses)


def documented_sbatch_script(project: Project) -> str:
    """docs/clusters.md's sbatch script, as a user would adapt it to this 2-core test cluster: 2
    tasks of 1 core, no GPU, a 2-minute limit with USR1 90 s before it (SLURM sends it about
    20-30 s in), this interpreter's environment; every other line as documented."""
    text = (REPO / "docs" / "clusters.md").read_text()
    section = text[text.index("## SLURM: an array job"):]
    start = section.index("```bash\n") + len("```bash\n")
    script = section[start:section.index("\n```", start)] + "\n"
    edits = {
        "#SBATCH --array=0-15": "#SBATCH --array=0-1",
        "#SBATCH --cpus-per-task=8": "#SBATCH --cpus-per-task=1",
        "#SBATCH --gres=gpu:2": "",
        "#SBATCH --mem=64G": "",
        "#SBATCH --time=04:00:00": "#SBATCH --time=2",
        "#SBATCH --signal=B:USR1@120": "#SBATCH --signal=B:USR1@90",
        "#SBATCH --output=logs/%A_%a.out": f"#SBATCH --output={project.root}/logs/%A_%a.out",
        "source .venv/bin/activate": f"export PATH={Path(sys.executable).parent}:$PATH",
        "python train.py &": f"python {project.script.name} &",
    }
    lines = []
    for line in script.splitlines():
        key = next((k for k in edits if line.startswith(k)), None)
        kept = line.startswith(("#SBATCH --job-name=", "#SBATCH --requeue", "#SBATCH --open-mode=append"))
        assert key is not None or kept or not line.startswith("#SBATCH"), f"an #SBATCH line the test does not know: {line}"
        lines.append(line if key is None else edits.pop(key))
    assert not edits, f"docs/clusters.md's script changed: {list(edits)} not found"
    return "\n".join(lines) + "\n"


def test_documented_sbatch_script_requeues_itself_until_the_budget_is_spent(
        project: Project, slurm: dict[str, str], pg_url: str) -> None:
    """The sbatch script of docs/clusters.md, submitted as it is (but for the cluster's size):
    USR1 before the time limit stops each task with exit 138, the script requeues it, the
    requeued tasks continue the study, and the last runs exit 0 with the budget exactly spent."""
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_jobs=2, n_trials=40, storage=pg_url, sleep=4.0, heartbeat_interval=1,
                                       record=project.root / "record.jsonl"))
    (project.root / "logs").mkdir()
    batch = project.root / "sweep.sbatch"
    batch.write_text(documented_sbatch_script(project))
    out = subprocess.run(["sbatch", "--parsable", str(batch)], check=True, capture_output=True, text=True,
                         env=slurm, timeout=60, cwd=project.root)
    job = out.stdout.strip().split(";")[0]
    started = time.time()
    wait_gone(slurm, job)
    logs = "".join(p.read_text() for p in sorted((project.root / "logs").iterdir()))
    ends = [line for line in logs.splitlines() if line.startswith("task ") and ": exit " in line]
    final = counts(pg_url)
    print(f"documented script: {len(ends)} task ends in {time.time() - started:.1f} s: {ends}; states {final}")
    statuses = Counter(line.rsplit(" ", 1)[1] for line in ends)
    assert statuses["138"] >= 1, ends  # stopped by USR1 at least once, and requeued
    assert statuses["0"] == 2, ends  # each task's last run finished
    assert set(statuses) <= {"0", "138"}, ends
    assert any("restart 1" in line for line in ends), ends
    assert "RUNNING" not in final and final.get("COMPLETE", 0) == 40, final
    assert "interrupted by SIGUSR1" in logs or final.get("FAIL", 0) >= 1, final

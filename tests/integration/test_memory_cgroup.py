"""Out of memory, for real: searches run inside a memory cgroup the test creates (#21).

The launcher is put in the cgroup before it starts (``sh -c 'echo $$ > cgroup.procs; exec python
script.py'``), so its workers and trial processes are too; each trial allocates and touches
``mib`` MiB and holds it. The search's own processes take ~200-300 MiB here (launcher, preloaded
server, workers, warm trial processes), so a 700 MiB limit holds two 150 MiB trials, not four.

Skipped when not root or the machine has no memory cgroup; ``HPARAM_JOBLIB_REQUIRE_CGROUP=1``
makes that a failure instead (CI).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing

import pytest

from benchmarks._cgroup import MemoryCgroup
from benchmarks._cgroup import unavailable as _unavailable
from tests.conftest import Project, child_env, search_config, states, trials

SCRIPT = '''
import time
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    time.sleep(config.get("delay", 0.0))  # memory that grows late in a trial
    block = bytearray(config["mib"] * 2**20)
    for i in range(0, len(block), 4096):  # touch every page: resident, charged to the cgroup
        block[i] = 1
    time.sleep(config["hold"])
    return config["x"]

if __name__ == "__main__":
    train()
'''

LIMIT_MIB = 700
pytestmark = pytest.mark.slow


@pytest.fixture
def cgroup() -> Iterator[MemoryCgroup]:
    why = _unavailable()
    if why:
        if os.environ.get("HPARAM_JOBLIB_REQUIRE_CGROUP") == "1":
            pytest.fail(f"HPARAM_JOBLIB_REQUIRE_CGROUP=1 but {why}")
        pytest.skip(why)
    group = MemoryCgroup(LIMIT_MIB)
    try:
        yield group
    finally:
        group.remove()


def _run_in(group: MemoryCgroup, project: Project, timeout: float = 240, cores: str = "") -> subprocess.CompletedProcess[str]:
    """Run the project's script with its launcher put in ``group`` before Python starts (on
    ``cores`` only, e.g. ``0,1``, when given)."""
    procs = shlex.quote(str(group.path / "cgroup.procs"))
    pin = f"taskset -c {cores} " if cores else ""
    command = f"echo $$ > {procs} && exec {pin}{shlex.quote(sys.executable)} {shlex.quote(str(project.script))}"
    return subprocess.run(["sh", "-c", command], cwd=project.root, capture_output=True, text=True,
                          timeout=timeout, env=child_env(), check=False)


def _project(project: Project, n_jobs: int, n_trials: int, mib: int, extra: str = "") -> Project:
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_trials=n_trials, n_jobs=n_jobs, mib=mib, hold=1.0,
                                       sampler="{type: random}") + extra)
    return project


def test_two_trials_fit_the_limit(cgroup: MemoryCgroup, project: Project) -> None:
    done = _run_in(cgroup, _project(project, n_jobs=2, n_trials=4, mib=150))
    assert done.returncode == 0, done.stderr[-3000:]
    assert states(project.db("exp_t")) == {"COMPLETE": 4}
    assert cgroup.oom_kills() == 0
    assert "out of memory" not in done.stderr


def test_too_many_at_once_are_rerun_with_fewer(cgroup: MemoryCgroup, project: Project) -> None:
    """Four 150 MiB trials do not fit: the kernel kills some; each is FAIL with the reason
    (re-run, not counted, never "fix the code"), the search runs fewer at once, says so once per
    step down, and still finishes exactly n_trials, exit 0."""
    done = _run_in(cgroup, _project(project, n_jobs=4, n_trials=6, mib=150))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fix the code" not in done.stderr
    kills = cgroup.oom_kills()
    assert kills > 0
    got = trials(project.db("exp_t"))
    complete = [t for t in got if t["state"] == "COMPLETE"]
    failed = [t for t in got if t["state"] == "FAIL"]
    assert len(complete) == 6 and not [t for t in got if t["state"] == "PRUNED"]
    assert failed and len(failed) <= kills
    for t in failed:
        reason = t["user_attrs"]["failure_reason"]
        assert t["user_attrs"]["failure_kind"] == "out_of_memory_beside", reason
        assert reason.startswith(f"out of memory: the kernel killed the trial's process at the memory "
                                 f"cgroup's limit of {LIMIT_MIB} MiB"), reason
        assert "its peak" in reason and "running beside it; it will be re-run" in reason, reason
    # Re-run means the same configuration runs again (not a new one in its place).
    by_number = {t["number"]: t for t in got}
    reruns = [t for t in got if "rerun_of" in t["user_attrs"]]
    assert reruns, got
    for t in reruns:
        killed = by_number[t["user_attrs"]["rerun_of"]]
        assert killed["state"] == "FAIL" and killed["params"] == t["params"], (killed, t)
    lowered = [line for line in done.stderr.splitlines() if "from now on" in line]
    assert lowered and all("out of memory with" in line and "running at most" in line for line in lowered)
    assert "out of memory beside other trials (FAIL, not counted, re-run)" in done.stdout
    assert "  at once:      " in done.stdout
    assert "at_once=" in done.stderr  # the progress bar
    with closing(sqlite3.connect(project.db("exp_t"))) as conn:
        (runs,) = conn.execute("SELECT value_json FROM study_user_attributes WHERE key = 'runs'").fetchone()
    how = json.loads(runs)[-1]["ended"]["how"]
    assert how.startswith("done; ran at most ") and "killed for memory beside others" in how, how
    status = subprocess.run(
        [sys.executable, "-c", "import sys; from hparam_joblib.results._cli import main; sys.exit(main())",
         "status", str(project.db("exp_t"))], capture_output=True, text=True, timeout=120, env=child_env(),
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert (f"  out of memory beside other trials: {len(failed)} (FAIL, not counted: re-run with fewer "
            "trials at once)") in status.stdout, status.stdout


def test_a_configuration_too_big_alone_is_pruned(cgroup: MemoryCgroup, project: Project) -> None:
    """One configuration that does not fit even alone: PRUNED with an out-of-memory reason, counted;
    the rest of the search goes on (exit 0)."""
    extra = "enqueue: [{mib: 100}, {mib: 650}, {mib: 100}, {mib: 100}]\n"
    proj = _project(project, n_jobs=1, n_trials=4, mib=100, extra=extra)
    proj.write_config(search_config(n_trials=4, n_jobs=1, hold=0.3, sampler="{type: random}")
                      + "  mib: {type: categorical, choices: [100, 650]}\n" + extra)
    done = _run_in(cgroup, proj)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fix the code" not in done.stderr
    got = sorted(trials(project.db("exp_t")), key=lambda t: t["number"])
    assert [t["state"] for t in got] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"], got
    big = got[1]
    reason = big["user_attrs"]["failure_reason"]
    assert big["params"]["mib"] == 650
    assert big["user_attrs"]["failure_kind"] == "out_of_memory", reason
    assert reason.startswith(f"out of memory: the kernel killed the trial's process at the memory cgroup's "
                             f"limit of {LIMIT_MIB} MiB"), reason
    assert "no other trial of this search was running; this configuration does not fit alone" in reason
    assert "1 out of memory alone (PRUNED, counted)" in done.stdout
    assert cgroup.oom_kills() == 1


def test_auto_runs_what_memory_holds(cgroup: MemoryCgroup, project: Project) -> None:
    """Two 300 MiB trials do not fit: n_jobs 2 gets an OOM kill; n_jobs: auto starts from the
    cores (2), takes the first trial's memory (once it ran a moment) for a trial's, and starts
    another only when memory holds it: no OOM kill, every trial COMPLETE, and it says what it
    chose and why."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    fixed = _run_in(cgroup, _project(project, n_jobs=2, n_trials=4, mib=300), cores="0,1")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    kills = cgroup.oom_kills()
    assert kills > 0  # the case is memory-bound
    project.write_config(search_config(n_trials=4, n_jobs="auto", mib=300, hold=1.0, sampler="{type: random}",
                                       tag="auto"))
    done = _run_in(cgroup, project, cores="0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert cgroup.oom_kills() == kills
    assert states(project.db("exp_auto")) == {"COMPLETE": 4}
    # A trial is created only once memory holds it: none sat RUNNING, its clock going, meanwhile
    # (one ran at a time here; the next is created as the last one's memory is freed, just before
    # Optuna records it finished).
    runs = sorted(trials(project.db("exp_auto")), key=lambda t: t["start"])
    for before, after in itertools.pairwise(runs):
        assert (before["complete"] - after["start"]).total_seconds() < 0.5, runs
    assert "n_jobs=auto " in done.stderr  # the progress bar
    line = next(x for x in done.stdout.splitlines() if x.startswith("  n_jobs auto:"))
    assert line.startswith("  n_jobs auto:  up to 2 at once (the cores); "), line
    assert "trial start(s) waited until memory held another trial (largest trial peak" in line, line
    with closing(sqlite3.connect(project.db("exp_auto"))) as conn:
        (runs,) = conn.execute("SELECT value_json FROM study_user_attributes WHERE key = 'runs'").fetchone()
    assert json.loads(runs)[-1]["ended"]["how"].startswith("done; n_jobs auto: up to 2 at once (the cores)")


def test_auto_starts_every_core_at_once_when_memory_is_plentiful(cgroup: MemoryCgroup, project: Project) -> None:
    """A CPU-bound search must not pay for learning the memory: small trials start side by side
    within seconds (the first does not run alone), no trial waits for memory."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_trials=4, n_jobs="auto", mib=20, hold=4.0, sampler="{type: random}"))
    done = _run_in(cgroup, project, cores="0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    got = sorted(trials(project.db("exp_t")), key=lambda t: t["start"])
    assert [t["state"] for t in got] == ["COMPLETE"] * 4
    assert got[1]["start"] < got[0]["complete"], got  # the second started while the first ran
    line = next(x for x in done.stdout.splitlines() if x.startswith("  n_jobs auto:"))
    assert "waited until memory" not in line, line
    assert cgroup.oom_kills() == 0


def test_auto_steps_down_then_back_up(cgroup: MemoryCgroup, project: Project) -> None:
    """Memory that grows late (after the first look at a trial's memory) lets two 300 MiB trials
    start together: the kernel kills one, it is re-run (FAIL, not counted) and auto runs one at
    a time; once the recent trials are small and memory holds two again, it says so and runs two
    again. Every configuration ends COMPLETE, exit 0."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    project.script.write_text(SCRIPT)
    enqueue = "enqueue: [{mib: 300}, {mib: 300}" + ", {mib: 20}" * 6 + "]\n"
    project.write_config(search_config(n_trials=8, n_jobs="auto", hold=2.5, delay=2.2, sampler="{type: random}")
                         + "  mib: {type: categorical, choices: [20, 300]}\n" + enqueue)
    done = _run_in(cgroup, project, cores="0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fix the code" not in done.stderr
    kills = cgroup.oom_kills()
    assert kills >= 1
    got = trials(project.db("exp_t"))
    failed = [t for t in got if t["state"] == "FAIL"]
    assert len([t for t in got if t["state"] == "COMPLETE"]) == 8 and not [t for t in got if t["state"] == "PRUNED"]
    assert failed and all(t["user_attrs"]["failure_kind"] == "out_of_memory_beside" for t in failed)
    assert any("running at most 1 at once until memory holds more (n_jobs: auto)" in x for x in done.stderr.splitlines())
    assert any("memory holds one more trial" in x and "running up to 2 at once again" in x
               for x in done.stderr.splitlines()), done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("  n_jobs auto:"))
    assert "out of memory with more at once: lowered to 1, back up to 2 as memory held more" in line, line


def test_out_of_memory_is_named_on_a_dask_worker(project: Project) -> None:
    """The same naming on the Dask backend (a LocalCluster, its workers in the cgroup too): a
    configuration too big alone is PRUNED as out of memory at the cgroup's limit, the rest of
    the search goes on, exit 0."""
    pytest.importorskip("distributed")
    why = _unavailable()
    if why:
        if os.environ.get("HPARAM_JOBLIB_REQUIRE_CGROUP") == "1":
            pytest.fail(f"HPARAM_JOBLIB_REQUIRE_CGROUP=1 but {why}")
        pytest.skip(why)
    group = MemoryCgroup(1500)  # a LocalCluster's scheduler and workers take more than loky's
    try:
        project.script.write_text(SCRIPT)
        project.write_config(search_config(n_trials=3, n_jobs=1, hold=0.3, sampler="{type: random}", backend="dask",
                                           dask_scheduler="local")
                             + "  mib: {type: categorical, choices: [50, 1600]}\n"
                             + "enqueue: [{mib: 50}, {mib: 1600}, {mib: 50}]\n")
        done = _run_in(group, project, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        got = sorted(trials(project.db("exp_t")), key=lambda t: t["number"])
        assert [t["state"] for t in got] == ["COMPLETE", "PRUNED", "COMPLETE"], got
        reason = got[1]["user_attrs"]["failure_reason"]
        assert got[1]["user_attrs"]["failure_kind"] == "out_of_memory", reason
        assert reason.startswith("out of memory: the kernel killed the trial's process at the memory cgroup's "
                                 "limit of 1500 MiB"), reason
        assert "this configuration does not fit alone" in reason
        assert group.oom_kills() >= 1
    finally:
        group.remove()

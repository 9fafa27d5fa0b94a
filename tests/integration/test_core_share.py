"""Each trial process gets its share of the cores however a library counts them: the thread
variables, ``LOKY_MAX_CPU_COUNT`` (``joblib.cpu_count()``) and a CPU affinity of its own; LightGBM's
default (which counts the cores itself) trains with the share; the summary says what the trials
really ran. Real scripts, real loky workers, real SQLite."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from tests.conftest import Project, child_env, search_config, states, unprivileged_prefix

#: Records what a trial sees, after waiting (bounded) until ``wait_for_loops`` trial processes have arrived,
#: so that the trials of different loops run at the same time.
SCRIPT = '''
import glob, json, os, sys, time
from hparam_joblib import current_trial_number, hparam_search

HERE = os.path.dirname(os.path.abspath(__file__))

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    import joblib
    number = current_trial_number()
    seen = {
        "pid": os.getpid(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "joblib": joblib.cpu_count(),
        "joblib_physical": joblib.cpu_count(only_physical_cores=True),
        "env": {k: os.environ.get(k) for k in ("LOKY_MAX_CPU_COUNT", "OMP_NUM_THREADS", "PYTHON_CPU_COUNT")},
    }
    if config.get("lightgbm"):
        from lightgbm import LGBMClassifier
        from sklearn.datasets import load_breast_cancer
        X, y = load_breast_cancer(return_X_y=True)
        model = LGBMClassifier(n_estimators=300, verbose=-1).fit(X, y)  # no n_jobs: LightGBM counts
        seen["lightgbm_threads"] = model.booster_.params["num_threads"]
    with open(os.path.join(HERE, f"seen_{number}.json"), "w") as fh:
        json.dump(seen, fh)
    open(os.path.join(HERE, f"arrived_{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 120
    while len(glob.glob(os.path.join(HERE, "arrived_*"))) < config.get("wait_for_loops", 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    return config["x"]

if __name__ == "__main__":
    before = sorted(os.sched_getaffinity(0))
    train()
    with open(os.path.join(HERE, "launcher.json"), "w") as fh:
        json.dump({"before": before, "after": sorted(os.sched_getaffinity(0))}, fh)
'''


def _allowed() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _cores() -> int:
    import joblib

    return int(joblib.cpu_count())


def _write(proj: Project, *, n_jobs: int, n_trials: int, extra: str = "") -> None:
    proj.script.write_text(SCRIPT)
    proj.write_config(search_config(n_jobs=n_jobs, n_trials=n_trials, n_startup_trials=None,
                                    sampler="{type: random}", wait_for_loops=n_jobs) + extra)
    (proj.root / "tmp").mkdir(exist_ok=True)


def _run(proj: Project, *, n_jobs: int, n_trials: int, extra: str = "", env: dict[str, str] | None = None,
         prefix: Sequence[str] = ()) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run the search as a user does, in its own lock namespace (TMPDIR: the per-host core slots
    of other searches on this machine, other tests', would leave this one unpinned)."""
    if not (proj.root / "config" / "config.yaml").exists():
        _write(proj, n_jobs=n_jobs, n_trials=n_trials, extra=extra)
    for old in [*proj.root.glob("seen_*.json"), *proj.root.glob("arrived_*")]:
        old.unlink()
    shutil.rmtree(proj.root / "optuna_studies", ignore_errors=True)  # a second run starts a fresh study
    tmp = proj.root / "tmp"
    run_env = child_env()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LOKY_MAX_CPU_COUNT",
                "PYTHON_CPU_COUNT", "NUMBA_NUM_THREADS"):
        run_env.pop(var, None)
    run_env["TMPDIR"] = str(tmp)
    run_env.update(env or {})
    done = subprocess.run([*prefix, sys.executable, str(proj.script)], check=False, cwd=proj.root,
                          capture_output=True, text=True, timeout=280, env=run_env)
    assert done.returncode == 0, done.stderr
    assert states(proj.db("exp_t")) == {"COMPLETE": n_trials}, done.stderr
    seen = [json.loads((proj.root / f"seen_{n}.json").read_text()) for n in range(n_trials)]
    return done, seen


def _procs_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "trial procs:" in line]
    assert len(lines) == 1, done.stdout + done.stderr
    return lines[0].strip()


def test_each_trial_runs_on_its_own_share_of_the_cores(project: Project) -> None:
    """n_jobs=2: every trial sees cores // 2 cores in its affinity, LOKY_MAX_CPU_COUNT and
    joblib.cpu_count() (physical cores too); the two trial processes' cores do not overlap; the
    launcher's own affinity is untouched; the summary names the threads seen and the cores."""
    allowed = _allowed()
    if len(allowed) < 2:
        pytest.skip("needs 2 cores to split (this machine allows one)")
    share = max(1, _cores() // 2)
    done, seen = _run(project, n_jobs=2, n_trials=4)
    for trial in seen:
        assert len(trial["affinity"]) == share, trial
        assert set(trial["affinity"]) <= set(allowed), trial
        assert trial["joblib"] == share and trial["joblib_physical"] <= share, trial
        assert trial["env"] == {"LOKY_MAX_CPU_COUNT": str(share), "OMP_NUM_THREADS": str(share),
                                "PYTHON_CPU_COUNT": str(share)}, trial
    by_process = {t["pid"]: set(t["affinity"]) for t in seen}
    assert len(by_process) == 2, seen  # the trials met: one per loop
    first, second = by_process.values()
    assert not first & second, by_process
    launcher = json.loads((project.root / "launcher.json").read_text())
    assert launcher["after"] == launcher["before"] == allowed, launcher
    line = _procs_line(done)
    assert line.startswith("trial procs:  2 (threads seen: at most "), line
    assert f"; {share} core{'s' if share != 1 else ''} each; capped at {share} thread" in line, line


def test_lightgbm_default_trains_with_the_share(project: Project) -> None:
    """LGBMClassifier() with no n_jobs asks joblib.cpu_count() and ignores OMP_NUM_THREADS: in a
    trial at n_jobs=2 it trains with cores // 2 threads, and no trial ran more threads than that."""
    pytest.importorskip("lightgbm", reason="lightgbm is not installed (the dev extra installs it)")
    if _cores() < 2:
        pytest.skip("with one core LightGBM picks one thread anyway")
    share = max(1, _cores() // 2)
    done, seen = _run(project, n_jobs=2, n_trials=2, extra="lightgbm: true\n")
    assert [t["lightgbm_threads"] for t in seen] == [share, share], seen
    line = _procs_line(done)
    threads_seen = int(line.split("at most ")[1].split()[0])
    assert 1 <= threads_seen <= share, line
    assert "above the cap" not in line, line


def test_more_loops_than_cores_are_not_pinned(project: Project) -> None:
    """n_jobs = cores + 1 (oversubscribed on purpose): no trial is pinned (the kernel balances),
    yet each still counts one core through joblib.cpu_count()."""
    allowed = _allowed()
    n_jobs = len(allowed) + 1
    if n_jobs > 9:
        pytest.skip(f"{n_jobs} loops are too many for a test")
    done, seen = _run(project, n_jobs=n_jobs, n_trials=n_jobs)
    for trial in seen:
        assert trial["affinity"] == allowed, trial
        assert trial["joblib"] == 1 and trial["env"]["LOKY_MAX_CPU_COUNT"] == "1", trial
    assert f"{len(allowed)} core{'s' if len(allowed) != 1 else ''} each" in _procs_line(done)


def _fewer_counted() -> dict[str, str]:
    """A SLURM job's count one below the allowed cores (no binding): a number, not a set of cores."""
    return {"SLURM_CPUS_PER_TASK": str(len(_allowed()) - 1)}


@pytest.mark.parametrize(
    ("env", "counted"),
    [({"LOKY_MAX_CPU_COUNT": "7"}, len), ({"HPARAM_JOBLIB_PIN_CORES": "0"}, len), (None, lambda a: len(a) - 1)],
    ids=["exported-LOKY_MAX_CPU_COUNT", "HPARAM_JOBLIB_PIN_CORES=0", "fewer-cores-counted-than-allowed"],
)
def test_unpinned_when_exported_switched_off_or_counted_below_the_allowed_cores(
        project: Project, env: dict[str, str] | None, counted: Any) -> None:
    """LOKY_MAX_CPU_COUNT exported by the user is kept as it is, and the user sizes the threads:
    the trials run on every allowed core; so with HPARAM_JOBLIB_PIN_CORES=0, and when the cores
    counted (a quota, SLURM_CPUS_PER_TASK) are fewer than the allowed ones (other jobs may run
    on the same cores: pinning would pile them up). The share itself still holds."""
    allowed = _allowed()
    if len(allowed) < 2:
        pytest.skip("needs 2 cores (with one there is nothing to pin)")
    env = env if env is not None else _fewer_counted()
    share = max(1, min(_cores(), counted(allowed)) // 2)
    _, seen = _run(project, n_jobs=2, n_trials=2, env=env)
    for trial in seen:
        assert trial["env"]["LOKY_MAX_CPU_COUNT"] == env.get("LOKY_MAX_CPU_COUNT", str(share)), trial
        assert trial["affinity"] == allowed, trial
        assert trial["env"]["OMP_NUM_THREADS"] == str(share), trial


def test_an_existing_cpu_allocation_is_split_not_widened(project: Project) -> None:
    """Launched under ``taskset`` on the last two allowed cores: the trials get one each, both
    inside that set."""
    allowed = _allowed()
    if len(allowed) < 3 or shutil.which("taskset") is None:
        pytest.skip("needs taskset and 3 cores (two of them, not the first, are given to the search)")
    given = allowed[-2:]
    _, seen = _run(project, n_jobs=2, n_trials=2, prefix=("taskset", "-c", ",".join(map(str, given))))
    assert sorted(c for t in seen for c in t["affinity"]) == given, seen
    assert all(t["joblib"] == 1 for t in seen), seen


def test_the_summary_line_reports_threads_seen_and_a_pool_above_the_cap() -> None:
    """The summary's words for what the trials ran: the threads seen, the cores, the cap; a
    trial that ran more threads than the cap is called out."""
    from hparam_joblib._result import SearchResult
    from hparam_joblib.runtime.launcher._progress import format_summary

    def line(**kw: Any) -> str:
        result = SearchResult(study_name="s", storage_url="sqlite:////tmp/s.db", db_path="/tmp/s.db", n_trials=1, counts={"COMPLETE": 1},
                              best_value=0.0, best_params={}, best_config={}, best_trial_number=0, wall_time=1.0,
                              trial_processes=2, **kw)
        return next(x.strip() for x in format_summary(result).splitlines() if "trial procs:" in x)

    assert line(threads_per_trial=1, threads_seen=1, cores_per_trial=(1,)) == \
        "trial procs:  2 (threads seen: at most 1 busy in a trial; 1 core each; capped at 1 thread)"
    assert line(threads_per_trial=1, threads_seen=2, cores_per_trial=(2,)) == \
        "trial procs:  2 (threads seen: at most 2 busy in a trial, above the cap of 1 (a library sized its own pool); 2 cores each)"
    assert line(threads_per_trial=0, threads_seen=4, cores_per_trial=(1, 2)) == \
        "trial procs:  2 (threads seen: at most 4 busy in a trial; 1-2 cores each; threads as exported)"


def test_the_core_slots_are_shared_with_other_users(user_project: Project) -> None:
    """Core slots left by root's searches (root's files in the sticky directory) do not keep an
    ordinary user's search from pinning; while root's search holds every core, the user's runs
    unpinned instead of piling onto the same cores."""
    allowed = _allowed()
    if len(allowed) < 2:
        pytest.skip("needs 2 cores to split (this machine allows one)")
    _write(user_project, n_jobs=2, n_trials=2)
    as_user = unprivileged_prefix(user_project)
    if not as_user:
        pytest.skip("needs root, to run the search as another user")
    tmp = user_project.root / "tmp"
    from hparam_joblib.runtime.loops import _cores as core_slots

    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    import tempfile

    tempfile.tempdir = None
    try:
        directory = core_slots._shared_directory()  # root's, as root's own searches leave it
        held = [core_slots._open_slot(directory / f"cpu{cpu}.lock") for cpu in allowed]
    finally:
        if old is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = old
        tempfile.tempdir = None
    try:
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _, seen = _run(user_project, n_jobs=2, n_trials=2, prefix=as_user)
        assert all(t["affinity"] == allowed for t in seen), seen  # every core held by root's search
    finally:
        for fd in held:
            os.close(fd)
    _, seen = _run(user_project, n_jobs=2, n_trials=2, prefix=as_user)
    share = max(1, _cores() // 2)
    assert all(len(t["affinity"]) == share for t in seen), seen  # root's files, free now
    assert not set(seen[0]["affinity"]) & set(seen[1]["affinity"]) or seen[0]["pid"] == seen[1]["pid"], seen

"""The warm trial process: thread caps, OpenMP at import, module code once per process, faults
that cost only their own process, per-trial logs. Real scripts, real loky workers, real SQLite."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Project, child_env, search_config, states, trials


def config_yaml(*, n_jobs: int, n_trials: int) -> str:
    """The test search: random sampler, seed 3."""
    return search_config(n_jobs=n_jobs, n_trials=n_trials, n_startup_trials=None, seed=3, sampler="{type: random}")


#: Counts its module-level runs, reports the thread pools it sees, fails on request.
SCRIPT = '''
import ctypes, json, os, signal, sys, time
from hparam_joblib import current_trial_number, hparam_search

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "module_runs.txt"), "a") as fh:
    fh.write(f"{os.getpid()}\\n")

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    number = current_trial_number()
    print(f"trial {number} starts with x={config['x']:.3f}")
    print(f"to stderr from trial {number}", file=sys.stderr)
    if config.get("threads"):
        import numpy  # OpenBLAS
        import sklearn.ensemble  # OpenMP (libgomp)
        from threadpoolctl import threadpool_info
        pools = {}
        for pool in threadpool_info():
            pools[pool["user_api"]] = pool["num_threads"]
        with open(os.path.join(HERE, f"threads_{number}.json"), "w") as fh:
            json.dump(pools, fh)
    if config.get("fault_trial") == number:
        fault = config["fault"]
        print("about to fail: " + fault, flush=True)
        if fault == "raise":
            raise RuntimeError("bad batch")
        if fault == "segv":
            ctypes.string_at(0)
        if fault == "exit":
            os._exit(7)
        if fault == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "hang":
            time.sleep(3600)
    if config.get("allocate_mib"):
        block = bytearray(config["allocate_mib"] * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])
    time.sleep(config.get("sleep", 0.0))
    return (config["x"] - 0.25) ** 2

if __name__ == "__main__":
    train()
'''


@pytest.fixture
def proj(project: Project) -> Project:
    project.script.write_text(SCRIPT)
    return project


def _config(proj: Project, n_jobs: int, n_trials: int, extra: str = "") -> None:
    proj.write_config(config_yaml(n_jobs=n_jobs, n_trials=n_trials) + textwrap.dedent(extra))


def _module_runs(proj: Project) -> list[str]:
    return (proj.root / "module_runs.txt").read_text().split()


def _cores() -> int:
    import joblib

    return int(joblib.cpu_count())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n_jobs", "extra", "env", "expect_omp", "expect_blas"),
    [
        (1, "", {}, lambda c: c, lambda c: c),
        (2, "", {}, lambda c: max(1, c // 2), lambda c: max(1, c // 2)),
        (1, "threads_per_trial: 1\n", {}, lambda c: 1, lambda c: 1),  # OpenBLAS clamps at the cores
        (2, "", {"OMP_NUM_THREADS": "3"}, lambda c: 3, lambda c: max(1, c // 2)),
    ],
    ids=["n_jobs=1", "n_jobs=2", "threads_per_trial", "exported-OMP_NUM_THREADS"],
)
def test_inner_thread_pools_are_capped_like_joblib(proj: Project, n_jobs: int, extra: str, env: dict[str, str],
                                                   expect_omp: object, expect_blas: object) -> None:
    """threadpoolctl inside a trial sees cores // n_jobs threads, threads_per_trial, or what the user exported."""
    _config(proj, n_jobs, 4, "threads: true\n" + extra)
    import subprocess
    import sys

    run_env = child_env()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        run_env.pop(var, None)
    run_env.update(env)
    done = subprocess.run([sys.executable, str(proj.script)], check=False, cwd=proj.root, capture_output=True, text=True,
                          timeout=240, env=run_env)
    assert done.returncode == 0, done.stderr
    assert states(proj.db("exp_t")) == {"COMPLETE": 4}
    cores = _cores()
    for number in range(4):
        pools = json.loads((proj.root / f"threads_{number}.json").read_text())
        assert pools["openmp"] == expect_omp(cores), pools  # type: ignore[operator]
        assert pools["blas"] == expect_blas(cores), pools  # type: ignore[operator]


@pytest.mark.slow
@pytest.mark.timeout(540)  # two searches (n_jobs 1 and 2) of 240 s each at most
def test_openmp_at_import_then_in_every_trial(project: Project) -> None:
    """A script that fits a HistGradientBoosting model at import time, then in each trial: all
    trials finish on n_jobs 1 and 2 (a worker that forked after OpenMP ran would hang them)."""
    project.script.write_text(textwrap.dedent('''
        import numpy as np
        from sklearn.datasets import make_classification
        from sklearn.ensemble import HistGradientBoostingClassifier
        from hparam_joblib import hparam_search

        X, y = make_classification(n_samples=2000, n_features=10, random_state=0)
        WARM = HistGradientBoostingClassifier(max_iter=5).fit(X[:500], y[:500])  # OpenMP at import

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            model = HistGradientBoostingClassifier(max_iter=10, learning_rate=config["x"] + 0.01)
            model.fit(X, y)
            return 1.0 - model.score(X, y)

        if __name__ == "__main__":
            train()
    '''))
    for n_jobs in (1, 2):
        project.write_config(config_yaml(n_jobs=n_jobs, n_trials=4) + "trial_timeout: 200\n")
        done = project.run("--set", f"tag=nj{n_jobs}", timeout=240)
        assert done.returncode == 0, done.stderr
        assert states(project.db(f"exp_nj{n_jobs}")) == {"COMPLETE": 4}, done.stderr


def test_module_level_code_runs_once_per_trial_process(proj: Project) -> None:
    """The script's module level runs in the launcher and once in each worker's trial process."""
    _config(proj, 2, 10, "sleep: 0.3\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr
    assert states(proj.db("exp_t")) == {"COMPLETE": 10}
    runs = _module_runs(proj)
    assert len(runs) == 1 + 2, runs  # the launcher + one trial process per worker
    pids = {t["user_attrs"]["trial_pid"] for t in trials(proj.db("exp_t"))}
    # Every trial ran in one of the two warm processes (under load one worker may take them all).
    assert pids and pids <= set(map(int, runs[1:]))
    assert "trial procs:  2 (" in done.stdout


def test_trials_per_process_recycles(proj: Project) -> None:
    """trials_per_process: 2 starts a fresh process every 2 trials (module level runs again)."""
    _config(proj, 1, 6, "trials_per_process: 2\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr
    runs = _module_runs(proj)
    assert len(runs) == 1 + 3, runs
    by_pid: dict[int, list[int]] = {}
    for t in trials(proj.db("exp_t")):
        by_pid.setdefault(t["user_attrs"]["trial_pid"], []).append(t["number"])
    assert sorted(len(v) for v in by_pid.values()) == [2, 2, 2]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("segv", "killed by SIGSEGV"),
        ("exit", "exited with status 7"),
        ("sigkill", "killed by SIGKILL"),
        ("hang", "timeout"),
    ],
)
def test_fault_costs_only_its_own_trial_process(proj: Project, fault: str, reason: str) -> None:
    """One trial dies (or hangs past trial_timeout): it is PRUNED with its reason and last output,
    the trials beside it COMPLETE, the total is exact, its worker's next trial runs in a fresh process."""
    # 29 other trials of 0.5 s outlast the 8 s timeout: the hanging trial's worker runs more after it.
    timeout = 8 if fault == "hang" else 120
    _config(proj, 2, 30, f"fault: {fault}\nfault_trial: 2\ntrial_timeout: {timeout}\nsleep: 0.5\n")
    done = proj.run(timeout=240)
    assert done.returncode == 0, done.stderr
    assert states(proj.db("exp_t")) == {"COMPLETE": 29, "PRUNED": 1}
    rows = {t["number"]: t for t in trials(proj.db("exp_t"))}
    bad = rows[2]
    assert bad["state"] == "PRUNED"
    first_line, *rest = bad["user_attrs"]["failure_reason"].splitlines()
    assert reason in first_line, first_line
    assert "about to fail: " + fault in rest, bad["user_attrs"]["failure_reason"]
    assert bad["user_attrs"]["peak_rss_mib"] > 0
    assert "peak memory" in first_line or fault == "hang"
    owner = bad["system_attrs"]["hparam_joblib:owner"]["pid"]
    same_worker = sorted(n for n, t in rows.items() if t["system_attrs"]["hparam_joblib:owner"]["pid"] == owner)
    before = [rows[n]["user_attrs"]["trial_pid"] for n in same_worker if n < 2]
    after = [rows[n]["user_attrs"]["trial_pid"] for n in same_worker if n > 2]
    assert after, same_worker
    assert bad["user_attrs"]["trial_pid"] not in after  # a fresh process after the death
    assert len(set(after)) == 1 and not set(before) & set(after)
    # The other worker's trial process was never replaced.
    others = {t["user_attrs"]["trial_pid"] for t in rows.values()
              if t["system_attrs"]["hparam_joblib:owner"]["pid"] != owner}
    assert len(others) == 1
    assert len(_module_runs(proj)) == 1 + 2 + 1
    assert "Trial 2 pruned: " in done.stderr and "last output: about to fail: " + fault in done.stderr


def test_trial_log_files_and_failure_tail(proj: Project) -> None:
    """Each trial's stdout and stderr land in its own log file (path in user attr log_file); a
    raising trial's failure reason ends with its last output lines; peak memory is recorded."""
    _config(proj, 2, 6, "fault: raise\nfault_trial: 4\nallocate_mib: 120\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr
    rows = {t["number"]: t for t in trials(proj.db("exp_t"))}
    log_dir = proj.root / "optuna_studies" / "exp_t"
    for number, row in rows.items():
        log = Path(row["user_attrs"]["log_file"])
        assert log == log_dir / f"trial_{number:05d}.log"
        text = log.read_text()
        assert f"trial {number} starts with x=" in text and f"to stderr from trial {number}" in text
        assert f"trial {number + 1} starts" not in text
        if number != 4:  # trial 4 raises before it allocates
            assert row["user_attrs"]["peak_rss_mib"] >= 120, row["user_attrs"]
    reason = rows[4]["user_attrs"]["failure_reason"]
    assert reason.splitlines()[0] == "RuntimeError: bad batch"
    assert "about to fail: raise" in reason
    assert 'script.py", line' in rows[4]["user_attrs"]["failure_traceback"]
    assert "trial 0 starts" not in done.stdout + done.stderr  # trial output stays in the files


def test_trial_output_terminal_prefixes_lines(proj: Project) -> None:
    """trial_output: terminal also shows each trial's lines, prefixed with its number."""
    _config(proj, 2, 4, "trial_output: terminal\n")
    done = proj.run()
    assert done.returncode == 0, done.stderr
    for number in range(4):
        assert f"[trial {number}] trial {number} starts with x=" in done.stderr, done.stderr


def test_function_defined_inside_main_ships_by_value(project: Project) -> None:
    """A training function made inside main() (not importable by name) goes by cloudpickle."""
    project.script.write_text(textwrap.dedent('''
        import os
        from hparam_joblib import hparam_search

        def main():
            offset = 0.25

            @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
            def train(config):
                return (config["x"] - offset) ** 2

            train()

        if __name__ == "__main__":
            main()
    '''))
    project.write_config(config_yaml(n_jobs=2, n_trials=4))
    done = project.run()
    assert done.returncode == 0, done.stderr
    assert states(project.db("exp_t")) == {"COMPLETE": 4}


def test_search_started_at_import_time_fails_clearly(project: Project) -> None:
    """A script without the __main__ guard: every trial says why, instead of recursing."""
    project.script.write_text(textwrap.dedent('''
        from hparam_joblib import hparam_search

        @hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
        def train(config):
            return config["x"]

        train()
    '''))
    project.write_config(config_yaml(n_jobs=1, n_trials=2))
    done = project.run()
    rows = trials(project.db("exp_t"))
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"], done.stderr
    assert "if __name__ == \"__main__\":" in rows[0]["user_attrs"]["failure_reason"]
    assert os.path.exists(project.root / "optuna_studies" / "exp_t" / "process_w000.log")


ATEXIT_SCRIPT = '''
import atexit, os, time
from hparam_joblib import hparam_search

HERE = os.path.dirname(os.path.abspath(__file__))
atexit.register(lambda: open(os.path.join(HERE, f"atexit_{os.getpid()}"), "w").close())

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    with open(os.path.join(HERE, "trial_pids.txt"), "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(0.3)  # long enough that both loops get trials on a quiet machine
    return config["x"]

if __name__ == "__main__":
    train()
'''


def test_trial_processes_exit_cleanly_at_the_end_and_run_atexit_handlers(project: Project) -> None:
    """At the end of the search each warm trial process is asked to exit, not killed: what the
    script registered with atexit (a logger's flush, a tracker's finish) runs in every one."""
    project.script.write_text(ATEXIT_SCRIPT)
    _config(project, 2, 6)
    done = project.run()
    assert done.returncode == 0, done.stderr
    assert states(project.db("exp_t")) == {"COMPLETE": 6}
    pids = set((project.root / "trial_pids.txt").read_text().split())
    # Two trial processes normally; on a loaded machine a loop that started late may find every
    # trial taken (CI on 2 cores saw it once): each process that ran a trial must have exited cleanly.
    assert 1 <= len(pids) <= 2, pids
    ran = {p.name.split("_", 1)[1] for p in project.root.glob("atexit_*")}
    assert pids <= ran  # (the launcher's own atexit file is there too)


PROGRAMMATIC = '''
import signal, sys
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    return config["x"]

if __name__ == "__main__":
    mine = lambda signum, frame: None
    signal.signal(signal.SIGINT, mine)
    try:
        train(argv=[])
    except Exception as err:
        print("raised:", type(err).__name__, err)
    print("handler kept:", signal.getsignal(signal.SIGINT) is mine)
'''


def test_a_trial_log_directory_that_cannot_be_made_stops_cleanly(project: Project) -> None:
    """A file where the trial log directory goes: one line naming it, from the CLI (no traceback)
    and from Python (the caller's signal handlers as they were, nothing started)."""
    project.write_config(search_config(n_jobs=2, n_trials=2))
    (project.root / "optuna_studies").mkdir()
    (project.root / "optuna_studies" / "exp_t").write_text("in the way\n")
    project.script.write_text(PROGRAMMATIC)
    done = project.run()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "raised: StorageError" in done.stdout and "cannot create the trial log directory" in done.stdout, done.stdout
    assert "handler kept: True" in done.stdout, done.stdout
    cli = project.root / "cli.py"
    cli.write_text(PROGRAMMATIC.replace("train(argv=[])", "train()"))
    done = project.run(script=cli)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot create the trial log directory" in done.stderr, done.stderr
    assert states(project.db("exp_t")) == {}  # no trial ran

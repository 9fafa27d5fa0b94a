"""Loky workers are forks of a preloaded server (``_forkserver``): single-threaded, never ran the
user's script, the launcher's child; the trial processes still get the user's environment.
Real scripts, real loky workers, real SQLite."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Project, child_env, search_config, states


def config_yaml(*, n_jobs: int = 2, n_trials: int = 6) -> str:
    """The test search: two threads per trial, random sampler."""
    return search_config(n_jobs=n_jobs, n_trials=n_trials, n_startup_trials=None, threads_per_trial=2,
                         sampler="{type: random}")


#: Records where each module-level run and each trial happened (pids, parents, the server's state).
SCRIPT = '''
import json, os, time
from hparam_joblib import current_trial_number, hparam_search

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "module_runs.txt"), "a") as fh:
    fh.write(f"{os.getpid()}\\n")

def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    worker = os.getppid()
    server = parent(worker)
    seen = {
        "trial": os.getpid(), "worker": worker, "worker_parent": server, "server_parent": parent(server),
        "server_threads": len(os.listdir(f"/proc/{server}/task")),
        "server_cmd": open(f"/proc/{server}/cmdline").read().replace("\\0", " "),
        "env": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    with open(os.path.join(HERE, f"seen_{current_trial_number()}.json"), "w") as fh:
        json.dump(seen, fh)
    time.sleep(0.3)  # both workers take trials
    return config["x"]

if __name__ == "__main__":
    train()
'''


def _run(proj: Project, **env: str) -> tuple[list[dict[str, object]], list[int]]:
    proj.script.write_text(SCRIPT)
    proj.write_config(config_yaml())
    run_env = child_env()
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        run_env.pop(var, None)
    run_env.update(env)
    done = subprocess.run([sys.executable, str(proj.script)], check=False, cwd=proj.root, capture_output=True,
                          text=True, timeout=240, env=run_env)
    assert done.returncode == 0, done.stderr
    assert states(proj.db("exp_t")) == {"COMPLETE": 6}
    seen = [json.loads((proj.root / f"seen_{n}.json").read_text()) for n in range(6)]
    runs = [int(p) for p in (proj.root / "module_runs.txt").read_text().split()]
    return seen, runs


def test_workers_are_forks_of_a_single_threaded_server_that_never_ran_user_code(project: Project) -> None:
    seen, runs = _run(project, OPENBLAS_NUM_THREADS="3")
    trial_pids = {s["trial"] for s in seen}
    (launcher,) = set(runs) - trial_pids  # the script's module ran in the launcher and the trial processes only
    assert sorted(runs) == sorted([launcher, *trial_pids])
    assert len({s["worker"] for s in seen}) == 2  # two loky workers, each with its warm trial process
    (server,) = {s["worker_parent"] for s in seen}
    assert server not in runs and not {s["worker"] for s in seen} & set(runs)
    assert {s["server_parent"] for s in seen} == {launcher}
    assert {s["server_threads"] for s in seen} == {1}  # safe to fork: no thread (OpenBLAS capped to 1)
    assert all("multiprocessing.forkserver" in str(s["server_cmd"]) for s in seen)
    # The server ran with the pools capped to 1; the workers got the user's environment back:
    # the exported value wins, the unset one gets threads_per_trial.
    assert {json.dumps(s["env"], sort_keys=True) for s in seen} == {
        json.dumps({"MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "3"}, sort_keys=True)
    }


def test_switched_off_the_workers_are_fresh_interpreters(project: Project) -> None:
    seen, runs = _run(project, HPARAM_JOBLIB_PRELOADED_WORKERS="0")
    (launcher,) = set(runs) - {s["trial"] for s in seen}
    assert {s["worker_parent"] for s in seen} == {launcher}
    assert {json.dumps(s["env"], sort_keys=True) for s in seen} == {
        json.dumps({"MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}, sort_keys=True)
    }


GATE_SCRIPT = '''
import os, time
from hparam_joblib import hparam_search

HERE = os.path.dirname(os.path.abspath(__file__))
start = time.time()
time.sleep(0.4)  # a slow import (torch, a dataset): what the gate spreads out
with open(os.path.join(HERE, "loads.txt"), "a") as fh:
    fh.write(f"{os.getpid()} {start} {time.time()}\\n")

def loaded():
    with open(os.path.join(HERE, "loads.txt")) as fh:
        return len(fh.read().splitlines())

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    # Hold every trial until all loops have loaded the script (the launcher's row + n_jobs), so a
    # loop that starts late on a loaded machine still finds trials left; bounded, never a hang.
    deadline = time.time() + 180
    while loaded() < N_JOBS + 1 and time.time() < deadline:
        time.sleep(0.1)
    return config["x"]

if __name__ == "__main__":
    train()
'''


def test_more_loops_than_cores_load_the_script_at_most_cores_at_a_time(project: Project) -> None:
    """n_jobs = cores + 3: the loops pass a start-up gate of `cores` slots, so no more than
    `cores` trial processes load the script at once; every trial still runs."""
    from loky import cpu_count

    cores = cpu_count()
    project.script.write_text(GATE_SCRIPT.replace("N_JOBS", str(cores + 3)))
    project.write_config(config_yaml(n_jobs=cores + 3, n_trials=2 * cores + 6))
    done = project.run()
    assert done.returncode == 0, done.stderr
    assert states(project.db("exp_t")) == {"COMPLETE": 2 * cores + 6}
    rows = [line.split() for line in (project.root / "loads.txt").read_text().splitlines()]
    loads = [(float(a), float(b)) for _, a, b in rows[1:]]  # rows[0]: the launcher, before any loop
    assert len(loads) == cores + 3  # one warm trial process per loop
    most = max(sum(1 for a, b in loads if a < t <= b) for _, t in loads)
    assert most <= cores, loads


ENV_SCRIPT = '''
import json, os
from hparam_joblib import current_trial_number, hparam_search

HERE = os.path.dirname(os.path.abspath(__file__))

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    with open(os.path.join(HERE, "seen.jsonl"), "a") as fh:
        fh.write(json.dumps({"tag": os.environ.get("HJ_MARK"), "worker": os.getppid()}) + "\\n")
    return config["x"]

if __name__ == "__main__":
    os.environ["HJ_MARK"] = "first"
    train(["--set", "tag=first"])
    os.environ["HJ_MARK"] = "second"   # a notebook cell between two searches
    train(["--set", "tag=second"])
'''


def test_a_second_search_in_one_process_sees_the_environment_set_after_the_first(project: Project) -> None:
    """The preloaded server (and any reused worker) outlives a search in a notebook kernel; each
    loop still hands its trial process the launcher's environment as it is when the loop starts."""
    project.script.write_text(ENV_SCRIPT)
    project.write_config(config_yaml())
    done = project.run()
    assert done.returncode == 0, done.stderr
    assert states(project.db("exp_first")) == {"COMPLETE": 6} and states(project.db("exp_second")) == {"COMPLETE": 6}
    seen = [json.loads(line) for line in (project.root / "seen.jsonl").read_text().splitlines()]
    assert [s["tag"] for s in seen] == ["first"] * 6 + ["second"] * 6


def test_a_tmpdir_too_long_for_the_servers_socket_falls_back_to_fresh_workers(project: Project) -> None:
    """The server's Unix socket lives in TMPDIR; a path longer than a socket allows (108 bytes)
    must not stop the search: the workers start as loky's fresh interpreters instead."""
    tmp = project.root / ("d" * 60) / ("e" * 60)
    tmp.mkdir(parents=True)
    project.script.write_text(SCRIPT)
    project.write_config(config_yaml())
    env = {**child_env(), "TMPDIR": str(tmp)}
    done = subprocess.run([sys.executable, str(project.script)], check=False, cwd=project.root,
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert states(project.db("exp_t")) == {"COMPLETE": 6}
    seen = [json.loads((project.root / f"seen_{n}.json").read_text()) for n in range(6)]
    assert all("multiprocessing.forkserver" not in str(s["server_cmd"]) for s in seen)  # loky's own workers

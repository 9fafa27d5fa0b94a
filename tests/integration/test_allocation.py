"""Cores from the job's allocation (#19 item 2): a SLURM job that does not bind its tasks to
cores (TaskPlugin=task/none) still says how many it gave (``SLURM_CPUS_PER_TASK``); ``n_jobs:
-1`` and the threads per trial follow it, not the node's size. Real launches; the variable is
what sbatch -c sets (tests/integration/test_slurm.py runs real jobs)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Project, child_env, search_config

SCRIPT = '''
import json, os
from hparam_joblib import current_trial_number, hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    import joblib
    seen = {"omp": os.environ.get("OMP_NUM_THREADS"), "joblib": joblib.cpu_count(), "pid": os.getppid()}
    with open(f"seen_{current_trial_number()}.json", "w") as fh:
        json.dump(seen, fh)
    return config["x"]

if __name__ == "__main__":
    train()
'''


def test_n_jobs_minus_one_and_the_threads_follow_slurm_cpus_per_task(project: Project) -> None:
    project.script.write_text(SCRIPT)
    project.write_config(search_config(n_jobs=-1, n_trials=4, n_startup_trials=None))
    env = {**child_env(), "SLURM_JOB_ID": "77", "SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "1"}
    for var in ("OMP_NUM_THREADS", "LOKY_MAX_CPU_COUNT"):
        env.pop(var, None)
    dry = subprocess.run([sys.executable, str(project.script), "--dry-run"], cwd=project.root, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0, dry.stderr
    assert "n_jobs: 1" in dry.stdout or "n_jobs 1" in dry.stdout, dry.stdout
    assert "1 cores (SLURM_CPUS_PER_TASK=1)" in dry.stdout, dry.stdout
    done = subprocess.run([sys.executable, str(project.script)], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((project.root / f"seen_{n}.json").read_text()) for n in range(4)]
    assert {s["omp"] for s in seen} == {"1"} and {s["joblib"] for s in seen} == {1}
    assert len({s["pid"] for s in seen}) == 1  # one loop: n_jobs -1 is the task's one core

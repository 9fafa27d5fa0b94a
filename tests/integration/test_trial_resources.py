"""Per-trial resources (#21 item 4): every trial records the CPU seconds it used (its process
and the children it reaped) beside its wall time and peak memory; `hparam-joblib trials` shows
them. Real trials: one that computes, one that sleeps, one whose child process computes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import Project, child_env, search_config, trials

SCRIPT = '''
import subprocess, sys, time
from hparam_joblib import hparam_search

def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    if config["mode"] == "compute":
        spin(0.8)
    elif config["mode"] == "sleep":
        time.sleep(0.8)
    else:  # a child computes (a DataLoader worker, a subprocess): reaped, so counted
        subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.8\\n"
                        "while time.process_time() < end: pass"], check=True)
    return 0.0

if __name__ == "__main__":
    train()
'''


def test_each_trial_records_its_cpu_seconds(project: Project) -> None:
    project.script.write_text(SCRIPT)
    project.write_config(
        search_config(n_jobs=1, n_trials=3, n_startup_trials=None, sweep="  mode: {type: categorical, choices: "
                      "[compute, sleep, child]}\n")
        + "enqueue: [{mode: compute}, {mode: sleep}, {mode: child}]\n"
    )
    done = project.run()
    assert done.returncode == 0, done.stderr[-3000:]
    by_mode = {t["params"]["mode"]: t for t in trials(project.db("exp_t"))}
    cpu = {mode: t["user_attrs"]["cpu_seconds"] for mode, t in by_mode.items()}
    assert cpu["compute"] >= 0.6, cpu
    assert cpu["sleep"] < 0.3, cpu
    assert cpu["child"] >= 0.6, cpu
    for t in by_mode.values():
        assert (t["complete"] - t["start"]).total_seconds() >= 0.8
        assert t["user_attrs"]["peak_rss_mib"] > 0
    code = "import sys; from hparam_joblib.results._cli import main; sys.exit(main())"
    table = subprocess.run([sys.executable, "-c", code, "trials", str(project.db("exp_t"))], check=False,
                           capture_output=True, text=True, timeout=120, env=child_env())
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split()
    assert header[header.index("duration_s") + 1] == "cpu_s"

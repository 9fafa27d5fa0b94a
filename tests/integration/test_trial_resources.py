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
    assert "peak_gpu_mib" not in header  # a CPU search gets no empty GPU column
    assert not any("peak_gpu_mib" in t["user_attrs"] for t in by_mode.values())


CHILD_MEMORY_SCRIPT = '''
import subprocess, sys
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    # A child (a DataLoader worker, a preprocessing subprocess) holds the memory, not the trial process.
    code = ("import time\\nblock = bytearray(%d * 2**20)\\nfor i in range(0, len(block), 4096): block[i] = 1\\n"
            "time.sleep(1.5)" % config["mib"])
    subprocess.run([sys.executable, "-c", code], check=True)
    return 0.0

if __name__ == "__main__":
    train()
'''


def test_a_trials_peak_memory_counts_its_child_processes(project: Project) -> None:
    project.script.write_text(CHILD_MEMORY_SCRIPT)
    project.write_config(search_config(n_jobs=1, n_trials=1, n_startup_trials=None, mib=300))
    done = project.run()
    assert done.returncode == 0, done.stderr[-3000:]
    (t,) = trials(project.db("exp_t"))
    assert t["user_attrs"]["peak_rss_mib"] >= 300, t["user_attrs"]


GPU_SCRIPT = '''
import time
import torch
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    block = torch.empty(config["mib"] * 2**20, dtype=torch.uint8, device="cuda")
    block.fill_(1)
    torch.cuda.synchronize()
    time.sleep(1.0)
    return float(config["mib"])

if __name__ == "__main__":
    train()
'''


def test_each_trial_records_its_peak_gpu_memory(project: Project) -> None:
    """On a real GPU: PyTorch's own peak (reset per trial, so a small trial after a big one shows
    its own), and `hparam-joblib trials` shows the column. Runs only where CUDA is."""
    torch = __import__("pytest").importorskip("torch")
    if not torch.cuda.is_available():
        __import__("pytest").skip("needs a CUDA device")
    project.script.write_text(GPU_SCRIPT)
    project.write_config(
        search_config(n_jobs=1, n_trials=2, n_startup_trials=None, gpus="[0]",
                      sweep="  mib: {type: categorical, choices: [64, 512]}\n")
        + "enqueue: [{mib: 512}, {mib: 64}]\n"
    )
    done = project.run()
    assert done.returncode == 0, done.stderr[-3000:]
    by_mib = {t["params"]["mib"]: t["user_attrs"]["peak_gpu_mib"] for t in trials(project.db("exp_t"))}
    assert 512 <= by_mib[512] < 2048, by_mib
    assert 64 <= by_mib[64] < 512, by_mib  # its own peak, not the process's
    code = "import sys; from hparam_joblib.results._cli import main; sys.exit(main())"
    table = subprocess.run([sys.executable, "-c", code, "trials", str(project.db("exp_t"))], check=False,
                           capture_output=True, text=True, timeout=120, env=child_env())
    assert "peak_gpu_mib" in table.stdout.splitlines()[0].split()

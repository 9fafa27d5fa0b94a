"""Two launches of one study at once (issue 23, item 4): each prints only messages about its own
launch. The launches share the study's log directory; the survivor of a killed launch must not
print the killed launch's workers saying ``launcher is gone``, nor (``trial_output: terminal``) the
other launch's trials' output."""

from __future__ import annotations

import os
import signal

from tests.conftest import Project, finished, running_count, search_config, wait_for

#: Each trial says which launch ran it (``--set who=A``), then waits while the hold file exists.
SCRIPT = """
import os, time
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    print("trial says", config["who"], flush=True)
    while os.path.exists(config["hold"]):
        time.sleep(0.05)
    return config["x"]

if __name__ == "__main__":
    train()
"""


def _workers_logs_text(project: Project) -> str:
    log_dir = project.root / "optuna_studies" / "exp_t"
    return "".join(p.read_text() for p in log_dir.glob("workers*.log"))


def test_survivor_prints_nothing_about_the_killed_launchs_workers(project: Project) -> None:
    """B, then A run the same study, each with 2 loops on held trials; A is SIGKILLed and its
    workers log ``launcher is gone; worker N stops``; B then finishes the study, its stderr
    without a line from A's workers or A's trials, and exits 0."""
    project.script.write_text(SCRIPT)
    hold = project.root / "hold"
    hold.touch()
    project.write_config(search_config(n_trials=10, n_jobs=2, n_startup_trials=2, trial_output="terminal")
                         + f"hold: {hold}\nwho: nobody\n")
    db = project.db("exp_t")
    # B first: A's trials start while B follows the log directory (B must not show them).
    b = project.start("--set", "who=B")
    wait_for(lambda: running_count(db) == 2, 120)
    a = project.start("--set", "who=A")
    try:
        wait_for(lambda: running_count(db) == 4, 120)
        os.kill(a.pid, signal.SIGKILL)
        a.communicate(timeout=60)
        # A's loky workers see their launcher gone and say so (in their launch's own log).
        wait_for(lambda: _workers_logs_text(project).count("launcher is gone") >= 2, 120)
        hold.unlink()
        _, err = b.communicate(timeout=240)
    except BaseException:
        for proc in (a, b):  # what each launch said, to see why a wait failed
            if proc.poll() is None:
                proc.kill()
            print(proc.args, proc.communicate()[1][-3000:])
        raise
    assert b.returncode == 0, err[-3000:]
    assert finished(db) == 10
    assert "launcher is gone" not in err, err[-3000:]
    assert "trial says B" in err and "trial says A" not in err, err[-3000:]
    assert "worker" not in "".join(line for line in err.splitlines() if "stops" in line), err[-3000:]

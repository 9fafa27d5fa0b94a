"""``hparam-joblib status`` shows each launch of a study (#19 item 5): where it ran (host, pid,
SLURM job or array task), its trials and how it ended, so that a dead array task shows.
Real launches (one finished, one stopped by SIGTERM under an array task's variables, one
SIGKILLed), then the real CLI on the file."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import Project, child_env, finished, running_count, search_config, wait_for

pytestmark = pytest.mark.slow


def status(project: Project) -> str:
    code = "import sys; from hparam_joblib.results._cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "status", str(project.db("exp_t"))], check=False,
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


def start(project: Project, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(project.script), *args], cwd=project.root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**child_env(), **env},
                            start_new_session=True)


def test_status_names_each_launch_its_trials_and_how_it_ended(project: Project) -> None:
    host = socket.gethostname()
    db = project.db("exp_t")
    project.write_config(search_config(n_jobs=2, n_trials=4, sleep=0.5))
    assert project.run().returncode == 0

    # An array task, stopped at its time limit (SIGTERM).
    array = {"SLURM_JOB_ID": "4567", "SLURM_ARRAY_JOB_ID": "4560", "SLURM_ARRAY_TASK_ID": "2"}
    proc = start(project, "--set", "n_trials=40", **array)
    wait_for(lambda: finished(db) >= 6 and running_count(db) == 2, 120)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143

    # A launch killed outright: it records nothing.
    killed = start(project, "--set", "n_trials=40")
    wait_for(lambda: finished(db) >= 8 and running_count(db) == 2, 120)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)

    text = status(project)
    lines = text.splitlines()
    start_at = lines.index("launches:   3")
    first, second, third = lines[start_at + 1:start_at + 4]
    assert re.match(rf"  run \w+ on {re.escape(host)} pid \d+, started [\d-]+ [\d:]+: trials COMPLETE 4; "
                    r"ended [\d-]+ [\d:]+: done$", first), first
    assert f"on {host} pid {proc.pid}, SLURM array 4560_2 (job 4567)" in second, second
    assert "FAIL 2" in second and second.endswith(": interrupted by SIGTERM"), second
    assert f"pid {killed.pid}," in third and third.endswith(
        "no end recorded: its process is gone (killed, or its machine stopped); its 2 RUNNING trial(s) are "
        "failed and re-run by the next launch"), third

"""Two launches of one study at once (issue 23, item 4): each prints only messages about its own
launch. The launches share the study's log directory; the survivor of a killed launch must not
print the killed launch's workers saying ``launcher is gone``."""

from __future__ import annotations

import os
import signal

from tests.conftest import Project, finished, running_count, search_config, wait_for


def _workers_logs_text(project: Project) -> str:
    log_dir = project.root / "optuna_studies" / "exp_t"
    return "".join(p.read_text() for p in log_dir.glob("workers*.log"))


def test_survivor_prints_nothing_about_the_killed_launchs_workers(project: Project) -> None:
    """A and B run the same study, each with 2 loops on held trials; A is SIGKILLed and its
    workers log ``launcher is gone; worker N stops``; B then finishes the study, its stderr
    without a line from A's workers, and exits 0."""
    hold = project.root / "hold"
    hold.touch()
    project.write_config(search_config(n_trials=10, n_jobs=2, n_startup_trials=2) + f"hold: {hold}\n")
    db = project.db("exp_t")
    a = project.start()
    wait_for(lambda: running_count(db) == 2, 120)
    b = project.start()
    try:
        wait_for(lambda: running_count(db) == 4, 120)
        os.kill(a.pid, signal.SIGKILL)
        a.communicate(timeout=60)
        # A's loky workers see their launcher gone and say so (in their launch's own log).
        wait_for(lambda: _workers_logs_text(project).count("launcher is gone") >= 2, 120)
        hold.unlink()
        _, err = b.communicate(timeout=240)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert b.returncode == 0, err[-3000:]
    assert finished(db) == 10
    assert "launcher is gone" not in err, err[-3000:]
    assert "worker" not in "".join(line for line in err.splitlines() if "stops" in line), err[-3000:]

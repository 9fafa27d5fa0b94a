"""Every count says what it counts (issue 23, item 6): finished = COMPLETE + PRUNED, as the budget
counts; FAIL trials (re-run) are shown as stored, never as finished: in the summary, in "already
holds ... nothing to run" and in ``hparam-joblib status`` (its trials line and throughput)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Project, child_env, running_count, search_config, states, wait_for


def _status(db: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "hparam_joblib", "status", str(db)], check=False,
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fail_trials_are_never_counted_as_finished(project: Project) -> None:
    """4 COMPLETE, then a run interrupted with 2 RUNNING trials (FAIL), then a run to n_trials=8,
    then n_trials=6: each message's numbers match the database's states."""
    project.write_config(search_config(n_trials=4, n_jobs=2, n_startup_trials=2))
    db = project.db("exp_t")
    first = project.run()
    assert first.returncode == 0, first.stderr[-2000:]

    hold = project.root / "hold"
    hold.touch()
    interrupted = project.start("--set", "n_trials=8", f"hold={hold}")
    try:
        wait_for(lambda: running_count(db) == 2, 120)
        interrupted.send_signal(signal.SIGINT)
        interrupted.communicate(timeout=120)
    finally:
        hold.unlink()
        if interrupted.poll() is None:
            interrupted.kill()
            interrupted.communicate()
    assert interrupted.returncode == 130
    assert states(db) == {"COMPLETE": 4, "FAIL": 2}

    resumed = project.run("--set", "n_trials=8")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert states(db) == {"COMPLETE": 8, "FAIL": 2}
    summary = resumed.stdout.splitlines()[0]
    assert "8/8 finished (COMPLETE 8; FAIL 2 not counted) in " in summary, summary

    again = project.run("--set", "n_trials=6")
    assert again.returncode == 0, again.stderr[-2000:]
    assert ("study exp_t already holds 8 finished trials (COMPLETE 8, PRUNED 0) of n_trials=6; "
            "also stored, not counted: FAIL 2; nothing to run") in again.stderr, again.stderr

    out = _status(db)
    assert "trials:     10 (COMPLETE 8, FAIL 2); 8/6 of n_trials finished (COMPLETE + PRUNED)" in out, out
    throughput = out.split("throughput:", 1)[1].split("launches:", 1)[0]
    runs = [line for line in throughput.splitlines() if line.startswith("  run ")]
    assert len(runs) == 3, out
    assert "(4 in " in runs[0] and "n/a (0 finished)" in runs[1] and "(4 in " in runs[2], out

"""Preemption and time limits (#19 item 3): SIGTERM (SLURM at the limit, systemd) and SIGUSR1
(``--signal=B:USR1@120``) to the launcher alone or to every process of the job at once stop the
search cleanly: exit 128 + the signal, running trials FAIL as interrupted (never PRUNED or
COMPLETE by mistake), nothing RUNNING; the same command then finishes the budget exactly."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import Project, finished, running_count, search_config, states, trials, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("signum", "to"), [
    (signal.SIGUSR1, "launcher"), (signal.SIGUSR1, "every process"), (signal.SIGTERM, "every process"),
])
def test_a_stop_signal_interrupts_cleanly_and_the_same_command_finishes(
    project: Project, signum: signal.Signals, to: str,
) -> None:
    project.write_config(search_config(n_jobs=2, n_trials=12, sleep=1.0))
    db = project.db("exp_t")
    proc = project.start()  # its own process group, like a batch job
    wait_for(lambda: db.exists() and finished(db) >= 2 and running_count(db) == 2, 120)
    sent = time.monotonic()
    if to == "launcher":
        proc.send_signal(signum)
    else:
        os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    found = trials(db)
    assert {t["state"] for t in found} <= {"COMPLETE", "FAIL"}, [(t["state"], t["user_attrs"]) for t in found]
    failed = [t for t in found if t["state"] == "FAIL"]
    assert failed, "the running trials were recorded as interrupted"
    for t in failed:
        reason = t["user_attrs"].get("failure_reason", "")
        assert signum.name in reason or "interrupted" in reason or "launcher" in reason, reason
    print(f"{signum.name} to {to}: exit {proc.returncode} after {took:.1f} s; states {states(db)}")
    again = project.run(timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert states(db).get("COMPLETE") == 12


def test_a_stop_signal_during_the_set_up_says_so(project: Project) -> None:
    """SIGUSR1 before any worker runs (here: the launch waits for a lock): one line, exit 138."""
    import sqlite3

    project.write_config(search_config(n_jobs=2, n_trials=2) + "lock_timeout: 300\n")
    assert project.run().returncode == 0
    db = project.db("exp_t")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = project.start("--set", "n_trials=4")

        def has_db_open() -> bool:
            fds = f"/proc/{proc.pid}/fd"
            return any(os.path.realpath(os.path.join(fds, fd)) == str(db.resolve()) for fd in os.listdir(fds))

        wait_for(has_db_open, 120)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 138, err[-2000:]
    assert "interrupted (SIGUSR1) before the search started" in err and "Traceback" not in err
    assert states(db) == {"COMPLETE": 2}


def test_signals_repeated_during_the_shutdown_do_not_cut_it_short(project: Project) -> None:
    """A batch script forwarding SIGTERM to a launcher that SLURM signalled too, or Ctrl-C pressed
    again: a burst of stop signals while the launcher stops its workers still leaves no trial
    RUNNING, and the exit status is the first signal's."""
    project.write_config(search_config(n_jobs=2, n_trials=12, sleep=2.0))
    db = project.db("exp_t")
    proc = project.start()
    wait_for(lambda: db.exists() and finished(db) >= 2 and running_count(db) == 2, 120)
    end = time.monotonic() + 3.0
    while proc.poll() is None and time.monotonic() < end:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "RUNNING" not in states(db), states(db)
    assert {t["state"] for t in trials(db)} <= {"COMPLETE", "FAIL"}

"""A closed output pipe ends our output quietly (issue 23, item 5): ``python train.py | head -3``.

The search goes on to its end when the reader of its stdout or stderr leaves (the trials, their
logs and the database never depend on the terminal): exit status 0, every trial finished, none
left RUNNING, no traceback. ``hparam-joblib`` stops at once with status 141 (128 + SIGPIPE, as
the shell shows a command killed by SIGPIPE), saying nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import SCRIPT, Project, child_env, running_count, search_config, states, wait_for


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_search_with_a_closed_output_finishes_quietly(project: Project, closed: str) -> None:
    """The reader of stdout (the summary) or of stderr (the bar) is gone before the search starts:
    the search runs every trial, exits 0 and prints no traceback on the other stream."""
    project.write_config(search_config(n_trials=8, n_jobs=2, n_startup_trials=2))
    write = _closed_pipe()
    other = project.root / "other.txt"
    try:
        with open(other, "w") as out:
            streams = {"stdout": write, "stderr": out} if closed == "stdout" else {"stdout": out, "stderr": write}
            done = subprocess.run([sys.executable, str(project.script)], check=False, cwd=project.root,
                                  timeout=240, env=child_env(), **streams)  # type: ignore[call-overload]
    finally:
        os.close(write)
    text = other.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "BrokenPipeError" not in text, text[-3000:]
    assert states(project.db("exp_t")) == {"COMPLETE": 8}
    if closed == "stderr":
        assert "study exp_t done: 8/8 finished" in text, text


def test_reader_leaving_mid_search_does_not_stop_it(project: Project) -> None:
    """``python train.py 2>&1 | head -c 20``: the reader reads the start of the bar and leaves
    while trials run; the bar's next writes fail, the search still runs every trial, none is
    left RUNNING, and it exits 0."""
    hold = project.root / "hold"
    hold.touch()
    project.write_config(search_config(n_trials=8, n_jobs=2, n_startup_trials=2) + f"hold: {hold}\n")
    db = project.db("exp_t")
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, str(project.script)], cwd=project.root, env=child_env(),
                            stdout=write, stderr=write)
    os.close(write)
    try:
        assert os.read(read, 20)  # the reader saw the start of the output
        wait_for(lambda: running_count(db) == 2, 120)
        os.close(read)  # ... and left, like head
        read = -1
        hold.unlink()
        assert proc.wait(timeout=240) == 0
    finally:
        if read != -1:
            os.close(read)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert states(db) == {"COMPLETE": 8}


def test_pipe_into_head_prints_no_traceback(project: Project) -> None:
    """The command of the issue, in a real shell: ``python script.py | head -3``, the script
    printing 3 lines at module level (head shows them and leaves before the summary); stderr has
    the bar and nothing else; the script's status (PIPESTATUS) is 0; every trial ran."""
    project.script.write_text("for i in range(3):\n    print('loading', i, flush=True)\n" + SCRIPT)
    project.write_config(search_config(n_trials=6, n_jobs=2, n_startup_trials=2))
    command = f"{sys.executable} {project.script} | head -3; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], check=False, cwd=project.root, capture_output=True,
                          text=True, timeout=240, env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "loading 0\nloading 1\nloading 2\n"
    assert "Traceback" not in done.stderr and "Broken" not in done.stderr, done.stderr[-3000:]
    assert states(project.db("exp_t")) == {"COMPLETE": 6}


@pytest.mark.parametrize("command", [["trials", "--csv", "-"], ["trials"], ["status"], ["best"]])
def test_results_cli_into_a_closed_pipe_exits_141_quietly(project: Project, command: list[str]) -> None:
    """``hparam-joblib trials DB | head``, the reader already gone: status 141, empty stderr."""
    project.write_config(search_config(n_trials=4, n_jobs=2, n_startup_trials=2))
    assert project.run().returncode == 0
    write = _closed_pipe()
    try:
        done = subprocess.run([sys.executable, "-m", "hparam_joblib", *command, str(project.db("exp_t"))],
                              check=False, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=child_env())
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""

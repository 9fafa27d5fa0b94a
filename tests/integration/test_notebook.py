"""Notebooks: real notebooks executed by nbclient in a real ipykernel (a Jupyter kernel process).

The training functions are defined in notebook cells, so they reach the n_jobs > 1 workers by
value (cloudpickle). Assertions come from the study's SQLite file and the executed cells' outputs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, _state, descendants, dump_processes, search_config, wait_for

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow


def _states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


def _client(nb: Any, cwd: Path) -> Any:
    """A client whose cells may each run 270 s: under the test's timeout, above _run_cell's limit."""
    return nbclient.NotebookClient(
        nb, timeout=270, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
    )


def _run_cell(client: Any, cell: Any, index: int, db: Path, limit: float = 240) -> None:
    """``client.execute_cell``, but a cell still running after ``limit`` s fails the test with what
    every process of the kernel was doing (their stacks), the study's states and the cell's output
    so far, and the kernel is killed; a bare timeout says nothing about a hang."""
    done = threading.Event()
    found: list[str] = []

    def watch() -> None:
        if done.wait(limit):
            return
        kernel = client.km.provisioner.process.pid
        found.append(f"states {_states(db) if db.exists() else None}\noutput so far:\n{_texts(cell)}\n"
                     + dump_processes(kernel))
        os.kill(kernel, 9)

    threading.Thread(target=watch, daemon=True).start()
    try:
        client.execute_cell(cell, index)
    except Exception:
        if found:
            pytest.fail(f"cell {index} still ran after {limit:g} s:\n{found[0]}")
        raise
    finally:
        done.set()
    if found:
        pytest.fail(f"cell {index} still ran after {limit:g} s:\n{found[0]}")


def _texts(cell: Any) -> str:
    """Everything a cell printed or displayed, as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("display_data", "execute_result"):
            parts.append(out.get("data", {}).get("text/plain", ""))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}")
    return "".join(parts)


def _search_cell(nb: Any) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "train(argv=" in c.source)


def test_example_notebook_runs_in_a_kernel_and_resumes(tmp_path: Path) -> None:
    """examples/notebook_digits.ipynb: 20 trials on 2 workers from a notebook cell, a notebook
    progress bar, the SearchResult returned; running the search cell again runs nothing more."""
    for name in ("notebook_digits.ipynb", "notebook_digits.yaml"):
        shutil.copy(REPO / "examples" / name, tmp_path / name)
    nb = nbformat.read(tmp_path / "notebook_digits.ipynb", as_version=4)
    client = _client(nb, tmp_path)
    search = _search_cell(nb)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        first = _texts(nb.cells[search])
        widgets = [o for o in nb.cells[search].outputs
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        again = nbformat.v4.new_code_cell(nb.cells[search].source)
        nb.cells.append(again)  # the search cell run a second time, in the same kernel
        client.execute_cell(again, len(nb.cells) - 1)
    db = tmp_path / "optuna_studies" / "digits_notebook_sgd.db"
    states = _states(db)
    assert sum(states.values()) == 20, states
    assert set(states) <= {"COMPLETE", "PRUNED"} and states.get("COMPLETE", 0) >= 4, states
    # A notebook bar (an ipywidgets progress bar), not text redrawn into the cell.
    assert len(widgets) == 1 and "trials:" in widgets[0]["data"]["text/plain"], nb.cells[search].outputs
    assert "study digits_notebook_sgd done: 20/20 finished" in first, first
    summary = _texts(nb.cells[search + 1])
    assert "finished 20/20" in summary and "best accuracy 0." in summary, summary
    # Both workers ran trials: the function really went to 2 processes.
    with sqlite3.connect(db) as conn:
        pids = {row[0] for row in conn.execute(
            "SELECT value_json FROM trial_user_attributes WHERE key = 'trial_pid'")}
    assert len(pids) == 2, pids
    held = (f"already holds 20 finished trials (COMPLETE {states.get('COMPLETE', 0)}, PRUNED "
            f"{states.get('PRUNED', 0)}) of n_trials=20; nothing to run")
    assert held in _texts(again), _texts(again)
    assert _states(db) == states


SLOW_CELLS = [
    "import time\nfrom hparam_joblib import hparam_search, report\nSTEP = 0.5",
    '''@hparam_search(config_path="slow.yaml", save_db_directory="./optuna_studies")
def train(config):
    for step in range(4):
        time.sleep(STEP)          # STEP: a notebook global, shipped with the function
        report(config["x"], step)
    return config["x"]''',
    "result = train(argv=[])",
    'print("RESULT", result.interrupted, result.counts)',
]
SLOW_YAML = search_config(experiment_name="slow", tag="nb", n_trials=12, n_startup_trials=None)


def _kernel_children(pid: int) -> set[int]:
    """Every live descendant process of ``pid`` (workers, trial processes)."""
    return {p for p in descendants(pid) if _state(p) != "Z"}


def test_kernel_interrupt_stops_the_workers_and_the_cell_resumes(tmp_path: Path) -> None:
    """A kernel interrupt (nbclient -> the kernel manager, as Jupyter's stop button) mid-search:
    the cell ends within seconds, the result says interrupted, nothing is RUNNING, the trial
    processes are gone; running the cell again finishes the study (12 trials exactly)."""
    (tmp_path / "slow.yaml").write_text(SLOW_YAML)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in SLOW_CELLS])
    db = tmp_path / "optuna_studies" / "slow_nb.db"
    client = _client(nb, tmp_path)
    sent: dict[str, float] = {}
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.execute_cell(nb.cells[1], 1)
        kernel_pid = client.km.provisioner.process.pid

        def interrupt() -> None:
            wait_for(lambda: _states(db).get("COMPLETE", 0) >= 2 and _states(db).get("RUNNING", 0) >= 1, 240)
            sent["at"] = time.monotonic()
            sent["pids"] = len(_kernel_children(kernel_pid))
            # Jupyter's stop button: the kernel manager's interrupt (SIGINT to the kernel's
            # process group, as jupyter_client sends it); nbclient's manager is async.
            asyncio.run(client.km.interrupt_kernel())

        thread = threading.Thread(target=interrupt, daemon=True)
        thread.start()
        _run_cell(client, nb.cells[2], 2, db)
        ended = time.monotonic()
        thread.join(10)
        assert "at" in sent, "the interrupt was never sent"
        assert ended - sent["at"] < 30, f"the cell took {ended - sent['at']:.1f} s to stop"
        assert sent["pids"] >= 2  # the loky workers and their trial processes were there
        client.execute_cell(nb.cells[3], 3)
        stopped = _states(db)
        assert "RUNNING" not in stopped, stopped
        assert 2 <= stopped.get("COMPLETE", 0) < 12, stopped
        assert "RESULT True" in _texts(nb.cells[3]), _texts(nb.cells[3])
        assert "SIGINT: stopping the workers" in _texts(nb.cells[2]), _texts(nb.cells[2])
        # No trial process survives (loky may keep its idle worker processes for reuse).
        wait_for(lambda: not [p for p in _kernel_children(kernel_pid) if _is_trial_process(p)], 30)
        again = nbformat.v4.new_code_cell(SLOW_CELLS[2] + "\n" + SLOW_CELLS[3])
        nb.cells.append(again)
        _run_cell(client, again, 4, db)
    final = _states(db)
    assert final.get("COMPLETE", 0) == 12, final
    assert "RUNNING" not in final and set(final) <= {"COMPLETE", "FAIL"}, final
    assert final.get("FAIL", 0) == stopped.get("FAIL", 0)  # the interrupted ones, nothing new
    assert "RESULT False" in _texts(again), _texts(again)


def _is_trial_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"hparam_joblib.runtime.trial._trial_process" in fh.read()
    except OSError:
        return False


def test_a_function_that_cannot_be_shipped_is_one_line_error(tmp_path: Path) -> None:
    """A cell function that uses an unpicklable notebook global (a lock): one-line UsageError,
    nothing run, no database created."""
    (tmp_path / "slow.yaml").write_text(SLOW_YAML)
    cells = [
        "import threading\nfrom hparam_joblib import hparam_search\nLOCK = threading.Lock()",
        '''@hparam_search(config_path="slow.yaml", save_db_directory="./optuna_studies")
def train(config):
    with LOCK:
        return config["x"]''',
        "try:\n    train(argv=[])\nexcept Exception as err:\n    print('ERROR', type(err).__name__, '|', err)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells])
    _client(nb, tmp_path).execute()
    text = _texts(nb.cells[2])
    line = next(line for line in text.splitlines() if line.startswith("ERROR"))
    assert line == (
        "ERROR UsageError | the training function 'train' cannot be sent to the trial processes: it is "
        "not importable by name and cloudpickle cannot ship it (TypeError: cannot pickle '_thread.lock' "
        "object); create such objects (locks, open files, connections, clients) inside the function, "
        "or define the function at the top level of a script or module"
    ), text
    assert not (tmp_path / "optuna_studies" / "slow_nb.db").exists()

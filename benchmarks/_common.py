"""Shared helpers of the benchmark scripts: run one point in a fresh process, derive the rates,
summarise repeats, record the machine, write JSON, markdown tables and figures.

Nothing here imports Optuna or hparam_joblib: the measured work happens in ``_run_one.py``
subprocesses, so the parent stays small and every point pays its own start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG_DIR = REPO / "config"
RUN_ONE = HERE / "_run_one.py"
NPROC = os.cpu_count() or 1

#: Display names of the frameworks, in table order.
LABELS = {
    "hparam_joblib": "hparam_joblib",
    "optuna_threads": "Optuna threads",
    "optuna_procs": "Optuna k procs",
    "optuna_journal": "Optuna k procs Journal",
    "joblib": "joblib.Parallel",
    "optuna_seq": "Optuna sequential",
}


def base_parser(description: str, default_run: str) -> argparse.ArgumentParser:
    """The flags every script shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke version (< 3 min): fewer points and trials")
    p.add_argument("--run-name", default=default_run, help="results go to benchmarks/results/<run-name>/")
    p.add_argument("--repeats", type=int, default=None, help="runs per point (default 3; 1 with --quick)")
    p.add_argument("--keep-dbs", action="store_true", help="keep each run's SQLite file (deleted by default)")
    return p


def results_dir(run_name: str) -> Path:
    path = HERE / "results" / run_name
    (path / "dbs").mkdir(parents=True, exist_ok=True)
    return path


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import optuna, joblib, loky, sqlalchemy, sqlite3; "
                "print(optuna.__version__, joblib.__version__, loky.__version__, sqlalchemy.__version__, "
                "sqlite3.sqlite_version)"
            ),
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    names = ["optuna", "joblib", "loky", "sqlalchemy", "sqlite"]
    return {
        "nproc": NPROC,
        "cpu_model": model,
        "python": platform.python_version(),
        **dict(zip(names, versions)),
        "platform": platform.platform(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git": _git_state(),
    }


def child_env() -> dict[str, str]:
    """The environment of a measured run: ``HJ_BENCH_SRC`` (a snapshot of the package made by
    run_all.sh) goes first on ``PYTHONPATH``, so the launcher and its loky workers import it."""
    env = dict(os.environ)
    src = os.environ.get("HJ_BENCH_SRC")
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def _git_state() -> str:
    """The commit the package was measured at, and whether its files had local changes."""
    src = os.environ.get("HJ_BENCH_SRC")
    if src and (Path(src) / "COMMIT").is_file():
        return (Path(src) / "COMMIT").read_text().strip() + f" (snapshot in {src})"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "hparam_joblib")
    return git("rev-parse", "--short", "HEAD") + (" (hparam_joblib/ modified)" if dirty else "")


def cpu_pressure() -> float | None:
    """Linux PSI ``some avg10`` for the CPU: % of time something waited for a CPU (noise gauge)."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def count_descendants() -> None:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``),
    so that ``RUSAGE_CHILDREN`` counts every process a run started, also those whose parent exited
    first (a forkserver that outlives its launcher by a few milliseconds, a daemonised helper)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_descendants(timeout: float = 30.0) -> None:
    """Wait for the processes a finished run left behind (reparented here by
    :func:`count_descendants`), so that their CPU time is in ``RUSAGE_CHILDREN``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.01)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def steady_rate(completions: Sequence[float], low: float = 0.1, high: float = 0.9) -> float | None:
    """Trials/s between the ``low`` and ``high`` quantiles of the completion times."""
    times = sorted(completions)
    if len(times) < 5:
        return None
    i, j = round(low * (len(times) - 1)), round(high * (len(times) - 1))
    span = times[j] - times[i]
    return (j - i) / span if span > 0 else None


def _read_result(proc: subprocess.Popen[str], timeout: float, exit_grace: float) -> tuple[str | None, bool]:
    """The ``@@RESULT`` line; then wait ``exit_grace`` s for a clean exit, else kill the session."""
    deadline = time.monotonic() + timeout
    line = None
    assert proc.stdout is not None
    for text in proc.stdout:
        if text.startswith("@@RESULT "):
            line = text
            break
        if time.monotonic() > deadline:
            break
    killed = False
    try:
        proc.wait(timeout=exit_grace if line else max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        # The search is over; only interpreter/worker teardown is left (slow with many loky
        # workers). Our own session: the child and the workers it started.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    proc.stdout.close()
    return line, killed


def run_point(
    spec: dict[str, Any],
    out_dir: Path,
    *,
    keep_db: bool = False,
    timeout: float = 900,
    exit_grace: float = 3.0,
) -> dict[str, Any]:
    """Run ``spec`` in a fresh ``_run_one.py`` process; returns the measured and derived numbers.

    The clock starts before the process is spawned; end-to-end ends when the search returns in
    the child. Teardown after that gets ``exit_grace`` seconds, then the process group is killed
    (``exit_s`` records it; CPU time is then incomplete and reported as None).
    """
    spec = dict(spec)
    if spec.get("storage") != "memory" and not spec.get("db"):
        stem = spec.pop("study_stem")
        spec["db"] = str(out_dir / "dbs" / f"{stem}_{uuid.uuid4().hex[:8]}.db")
    else:
        spec.pop("study_stem", None)
    pressure = cpu_pressure()
    load1 = os.getloadavg()[0]
    cpu_before = _children_cpu()
    t_popen = time.time()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_ONE), json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=str(REPO),
            start_new_session=True,
            env=child_env(),
        )
        line, killed = _read_result(proc, timeout, exit_grace)
        t_exit = time.time()
        err.seek(0)
        stderr = err.read()
    reap_descendants()
    cpu_s = _children_cpu() - cpu_before
    if line is None:
        raise RuntimeError(f"run failed (exit {proc.returncode}): {json.dumps(spec)}\n{stderr[-3000:]}")
    raw = json.loads(line[len("@@RESULT ") :])
    if spec.get("db") and not keep_db:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(spec["db"] + suffix).unlink(missing_ok=True)
    trials = raw.pop("trials", [])
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    completions = sorted(t["complete"] for t in finished if t["complete"] is not None)
    target = int(spec.get("expect_finished", spec["n_trials"]))
    e2e = raw["t_done"] - t_popen
    return {
        "spec": spec,
        "e2e_s": e2e,
        "exit_s": t_exit - t_popen,
        "startup_s": raw["t_enter"] - t_popen,
        "search_s": raw["t_done"] - raw["t_start"],
        "first_trial_s": (completions[0] - t_popen) if completions else None,
        "n_finished": len(finished),
        "states": states,
        "lost": max(0, target - len(finished)),
        "errors": raw.get("errors", []),
        "e2e_rate": len(finished) / e2e if e2e > 0 else None,
        "ss_rate": steady_rate(completions),
        "cpu_s": None if killed else cpu_s,
        "cpu_ms_per_trial": None if killed else 1000 * cpu_s / max(1, len(finished)),
        "killed_after_result": killed,
        "load1": load1,
        "cpu_psi_avg10": pressure,
        "completions": completions,
        "trials": trials,
        "raw": {k: v for k, v in raw.items() if k != "sampler_s"},
        "sampler_s": raw.get("sampler_s"),
        "returncode": proc.returncode,
    }


def med(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def spread(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    return (min(vals), max(vals)) if vals else (None, None)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_spread(values: Sequence[float | None], digits: int = 1) -> str:
    """``median (min-max)``; just the value when there is one run."""
    m = med(values)
    lo, hi = spread(values)
    if m is None:
        return "-"
    if len([v for v in values if v is not None]) < 2:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({fmt(lo, digits)}-{fmt(hi, digits)})"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")


def nj_label(framework: str, k: int) -> str:
    """Say what n_jobs=1 means for each framework."""
    if k != 1:
        return str(k)
    return {
        "hparam_joblib": "1 (1 worker proc + fork/trial)",
        "optuna_threads": "1 (sequential, in-process)",
        "optuna_procs": "1 (1 forked proc)",
    }.get(framework, "1")

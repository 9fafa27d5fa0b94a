"""Start-up: from launch to the first trial running, per n_jobs, for hparam_joblib and its peers.

What a user waits for before anything useful happens. Each run is a fresh Python process (a user's
``python train.py``) with a zero-work objective that records when it starts; 2 trials per worker.
Reported per framework and n_jobs (the median of ``--repeats``):

* ``first``: launch to the first trial running (its objective called);
* ``all``: launch to the moment ``n_jobs`` different processes have each started a trial
  (every worker busy; empty when fewer processes ran trials, e.g. threads);
* ``wall``: launch to exit; ``cpu``: CPU seconds of the whole process tree.

Peers: ``joblib`` (``joblib.Parallel`` over pre-sampled configs, loky), ``optuna_procs`` /
``optuna_journal`` (Optuna's recipe: k ``python`` processes, each ``load_study`` on one SQLite
file / one ``JournalFileBackend`` file and ``optimize``), ``optuna_threads`` (``optimize(n_jobs=k)``).

    python benchmarks/startup.py --run-name full
    python benchmarks/startup.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import count_descendants, reap_descendants

FRAMEWORKS = ("hparam_joblib", "joblib", "optuna_procs", "optuna_journal", "optuna_threads")

SCRIPT = textwrap.dedent('''\
    import os, time
    from hparam_joblib import hparam_search

    @hparam_search(config_path="config.yaml", save_db_directory=".")
    def train(config):
        with open(os.environ["HJ_STARTS"], "a") as f:
            f.write(f"{time.time()} {os.getpid()}\\n")
        return config["x"]

    if __name__ == "__main__":
        train()
    ''')


def _record() -> None:
    with open(os.environ["HJ_STARTS"], "a") as f:
        f.write(f"{time.time()} {os.getpid()}\n")


def _objective(trial: Any) -> float:
    _record()
    return float(trial.suggest_float("x", 0.0, 1.0))


def _plain(x: float) -> float:
    _record()
    return x


def _one(spec: dict[str, Any]) -> None:
    """One measured run, in this fresh process."""
    framework, k, n = spec["framework"], spec["n_jobs"], spec["n_trials"]
    work = Path(spec["dir"])
    if framework == "joblib":
        from joblib import Parallel, delayed

        Parallel(n_jobs=k)(delayed(_plain)(i / n) for i in range(n))
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if framework == "optuna_threads":
        study = optuna.create_study(storage=f"sqlite:///{work / 'threads.db'}")
        study.optimize(_objective, n_trials=n, n_jobs=k)
        return
    journal = framework == "optuna_journal"
    optuna.create_study(study_name="s", storage=_storage(work, journal))
    per = [n // k + (1 if i < n % k else 0) for i in range(k)]
    procs = [subprocess.Popen([sys.executable, __file__, "--recipe-worker",
                               json.dumps({**spec, "n_trials": m, "journal": journal})]) for m in per]
    codes = [p.wait() for p in procs]  # every one, also after a failure
    if any(codes):
        raise RuntimeError(f"{sum(map(bool, codes))} of {k} recipe processes failed")


def _storage(work: Path, journal: bool) -> Any:
    import optuna

    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(work / "journal.log")))
    return f"sqlite:///{work / 'recipe.db'}"


def _recipe_worker(spec: dict[str, Any]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="s", storage=_storage(Path(spec["dir"]), spec["journal"]))
    study.optimize(_objective, n_trials=spec["n_trials"])


def measure(framework: str, k: int, timeout: float = 600) -> dict[str, Any]:
    n = 2 * k
    with tempfile.TemporaryDirectory(prefix=f"hj-startup-{framework}-") as tmp:
        starts = Path(tmp) / "starts.txt"
        env = dict(os.environ, HJ_STARTS=str(starts))
        src = os.environ.get("HJ_BENCH_SRC")  # run_all.sh's snapshot of the package goes first
        if src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        if framework == "hparam_joblib":
            (Path(tmp) / "train.py").write_text(SCRIPT)
            (Path(tmp) / "config.yaml").write_text(
                f"experiment_name: startup\ntag: t\ndirection: minimize\nn_jobs: {k}\nn_trials: {n}\n"
                "sweep_parameters:\n  x: {type: float, low: 0.0, high: 1.0}\n")
            cmd = [sys.executable, "train.py", "--quiet"]
        else:
            cmd = [sys.executable, __file__, "--one",
                   json.dumps({"framework": framework, "n_jobs": k, "n_trials": n, "dir": tmp})]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launch = time.time()
        done = subprocess.run(cmd, check=False, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.time() - launch
        reap_descendants()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:  # e.g. the SQLite recipe's "database is locked" at many processes
            why = next((line for line in reversed(done.stderr.splitlines()) if "Error" in line), "exit status")
            print(f"  {framework} n_jobs={k} failed: {why[:160]}", flush=True)
            return {"framework": framework, "n_jobs": k, "n_trials": n, "trials": None, "first_s": None,
                    "all_s": None, "wall_s": wall, "cpu_s": None, "failed": why[:300]}
        rows = sorted((float(t), int(p)) for t, p in (line.split() for line in starts.read_text().splitlines()))
    seen: set[int] = set()
    every = None
    for t, pid in rows:
        seen.add(pid)
        if len(seen) == k:
            every = t - launch
            break
    return {"framework": framework, "n_jobs": k, "n_trials": n, "trials": len(rows),
            "first_s": rows[0][0] - launch, "all_s": every, "wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def table(rows: list[dict[str, Any]], frameworks: list[str], points: list[int]) -> str:
    lines = ["| n_jobs | framework | first trial (s) | all workers busy (s) | wall (s) | CPU (s) |",
             "|---:|---|---:|---:|---:|---:|"]
    for k in points:
        for fw in frameworks:
            mine = [r for r in rows if r["framework"] == fw and r["n_jobs"] == k]
            if not mine:
                continue

            def med(key: str, mine: list[dict[str, Any]] = mine) -> float | None:
                vals = [r[key] for r in mine if r[key] is not None]
                return statistics.median(vals) if vals else None

            failed = sum(bool(r.get("failed")) for r in mine)
            note = f" ({failed} of {len(mine)} runs failed: lost trials)" if failed else ""
            lines.append(f"| {k} | {fw}{note} | {_fmt(med('first_s'))} | {_fmt(med('all_s'))} | "
                         f"{_fmt(med('wall_s'))} | {_fmt(med('cpu_s'))} |")
    return "\n".join(lines)


def main() -> None:
    count_descendants()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-name", default="startup")
    parser.add_argument("--quick", action="store_true", help="n_jobs 1, 2, 8 once")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-jobs", default="", help="comma-separated points (default 1,2,8,32,64)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    args = parser.parse_args()
    points = [int(x) for x in args.n_jobs.split(",")] if args.n_jobs else ([1, 2, 8] if args.quick else
                                                                             [1, 2, 8, 32, 64])
    frameworks = args.frameworks.split(",")
    repeats = 1 if args.quick else args.repeats
    rows = []
    for rep in range(repeats):
        for k in points:
            for fw in frameworks:  # interleaved: machine noise hits every framework alike
                row = measure(fw, k)
                row["repeat"] = rep
                rows.append(row)
                if not row.get("failed"):
                    print(f"  {fw:15s} n_jobs={k:<3d} first {row['first_s']:.2f} s  all {_fmt(row['all_s'])} s  "
                          f"wall {row['wall_s']:.2f} s  cpu {row['cpu_s']:.2f} s", flush=True)
    out = HERE / "results" / args.run_name
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows, frameworks, points)
    load = os.getloadavg()
    (out / "startup.json").write_text(json.dumps({"rows": rows, "loadavg": load, "cpus": os.cpu_count()},
                                                 indent=1))
    (out / "startup.md").write_text(text + "\n")
    print(text)
    print(f"load average at the end: {load[0]:.2f}; results in {out}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        _one(json.loads(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "--recipe-worker":
        _recipe_worker(json.loads(sys.argv[2]))
    else:
        main()

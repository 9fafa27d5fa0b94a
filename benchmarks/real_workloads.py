"""Real training code (scikit-learn, PyTorch, numpy/BLAS) under hparam_joblib and its peers.

The headline benchmark: the same training function (``benchmarks/_real.py``), the same number of
trials, the same n_jobs, each framework in a fresh Python process (its start-up is part of its
time), the frameworks interleaved within each repeat so that machine noise hits them alike:

* ``joblib``: ``joblib.Parallel(n_jobs=k)`` of the function over pre-sampled configs: the floor
  (no storage, no sampler, no isolation; joblib caps inner threads at cores // k through the
  thread variables, which LightGBM's default ignores: it counts the cores with ``joblib.cpu_count``).
* ``joblib_1thread`` (``lightgbm`` and ``xgboost`` only): the same, with ``n_jobs=1`` passed to
  the model by hand (``HJ_REAL_THREADS=1``): what a user who knows about the problem writes.
* ``hparam_joblib``: the decorated function, a real SQLite file, random sampler.
* ``optuna_procs`` / ``optuna_journal``: Optuna's multi-process recipe, k processes each running
  ``study.optimize`` on one SQLite file / one ``JournalFileBackend`` file (no thread caps: what a
  user of the recipe gets).
* ``optuna_threads``: ``study.optimize(n_jobs=k)`` in one process.

Reported per framework: end-to-end seconds (process start to exit), CPU seconds of the whole
process tree, the median per-trial duration of the training work itself (measured inside
the function), against joblib's, and the most OS threads a process had after a trial's work
(``/proc/self/task``: the pools the libraries really started).

    python benchmarks/real_workloads.py                       # all five workloads, n_jobs=2
    python benchmarks/real_workloads.py --workloads lightgbm --frameworks joblib,joblib_1thread,hparam_joblib
    python benchmarks/real_workloads.py --workloads sklearn --repeats 3 --run-name mybox
    python benchmarks/real_workloads.py --quick               # a smoke run (~1 minute)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import count_descendants, reap_descendants

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("joblib", "joblib_1thread", "hparam_joblib", "optuna_procs", "optuna_journal", "optuna_threads")
#: Workloads whose library sizes its own thread pool (``joblib_1thread`` pins it by hand).
SELF_SIZED = ("lightgbm", "xgboost")
#: Trials per workload: 30-60 s of single-threaded training work on this 2-core machine (the
#: boosting ones: 5-fold CV on breast_cancer, well under a second a trial with one thread).
TRIALS = {"sklearn": 24, "torch": 24, "numpy": 24, "lightgbm": 24, "xgboost": 24}
SPACE = {
    "lr": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
    "l2": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}
#: Fixed parameters per workload (the cost of a trial).
FIXED: dict[str, dict[str, Any]] = {"sklearn": {"max_iter": 60}, "torch": {"width": 128, "steps": 150},
                                    "numpy": {"solves": 12}, "lightgbm": {}, "xgboost": {}}


# -- one measured run (a fresh process) --------------------------------------------------------

def _configs(workload: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        config = dict(FIXED[workload])
        for name, p in SPACE.items():
            low, high = float(p["low"]), float(p["high"])
            config[name] = float(10 ** rng.uniform(math.log10(low), math.log10(high)))
        out.append(config)
    return out


def _objective(workload: str) -> Any:
    import _real

    def objective(trial: Any) -> float:
        config = dict(FIXED[workload])
        for name, p in SPACE.items():
            config[name] = trial.suggest_float(name, float(p["low"]), float(p["high"]), log=True)
        return _real.train(config)

    return objective


def _one(spec: dict[str, Any]) -> None:
    sys.path.insert(0, str(HERE))
    framework, workload, n_jobs, n_trials = spec["framework"], spec["workload"], spec["n_jobs"], spec["n_trials"]
    work = Path(spec["dir"])
    if framework in ("joblib", "joblib_1thread"):
        import _real
        from joblib import Parallel, delayed

        Parallel(n_jobs=n_jobs)(delayed(_real.train)(c) for c in _configs(workload, n_trials))
    elif framework == "hparam_joblib":
        import _real
        import yaml

        from hparam_joblib import hparam_search

        config = {"experiment_name": "real", "tag": workload, "direction": "minimize", "n_jobs": n_jobs,
                  "n_trials": n_trials, "seed": 0, "sampler": {"type": "random"}, **FIXED[workload],
                  "sweep_parameters": SPACE}
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        train = hparam_search(config_path=str(work / "config.yaml"), save_db_directory=str(work))(_real.train)
        result = train(argv=[])
        assert result is not None and result.counts.get("COMPLETE") == n_trials, result
    elif framework == "optuna_threads":
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0),
                                    storage=f"sqlite:///{work / 'threads.db'}")
        study.optimize(_objective(workload), n_trials=n_trials, n_jobs=n_jobs)
    elif framework in ("optuna_procs", "optuna_journal"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        journal = framework == "optuna_journal"
        storage = _storage(work, journal)
        optuna.create_study(study_name="real", storage=storage)
        per = [n_trials // n_jobs + (1 if i < n_trials % n_jobs else 0) for i in range(n_jobs)]
        procs = [subprocess.Popen([sys.executable, __file__, "--recipe-worker",
                                   json.dumps({**spec, "n_trials": k, "seed": i, "journal": journal})])
                 for i, k in enumerate(per)]
        codes = [p.wait() for p in procs]  # every one, also after a failure
        if any(codes):
            raise RuntimeError(f"{sum(map(bool, codes))} of {n_jobs} recipe processes failed")
    else:
        raise ValueError(framework)


def _storage(work: Path, journal: bool) -> Any:
    import optuna

    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(work / "journal.log")))
    return f"sqlite:///{work / 'recipe.db'}"


def _recipe_worker(spec: dict[str, Any]) -> None:
    """One process of Optuna's recipe: load the shared study, optimize its share of trials."""
    sys.path.insert(0, str(HERE))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="real", storage=_storage(Path(spec["dir"]), spec["journal"]),
                              sampler=optuna.samplers.RandomSampler(seed=spec["seed"]))
    study.optimize(_objective(spec["workload"]), n_trials=spec["n_trials"])


# -- the driver --------------------------------------------------------------------------------

def measure(framework: str, workload: str, n_jobs: int, n_trials: int, time_limit: float = 300) -> dict[str, Any]:
    """Run one framework once in a fresh process; end-to-end and CPU seconds, per-trial durations."""
    with tempfile.TemporaryDirectory(prefix=f"hj-real-{framework}-") as tmp:
        timings = Path(tmp) / "timings.jsonl"
        env = dict(os.environ, HJ_REAL_WORKLOAD=workload, HJ_REAL_TIMINGS=str(timings))
        if framework == "joblib_1thread":
            env["HJ_REAL_THREADS"] = "1"
        src = os.environ.get("HJ_BENCH_SRC")  # run_all.sh's snapshot of the package goes first
        if src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        spec = {"framework": framework, "workload": workload, "n_jobs": n_jobs, "n_trials": n_trials, "dir": tmp}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--one", json.dumps(spec)], env=env, cwd=tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=time_limit)
        except subprocess.TimeoutExpired:  # e.g. the recipe's oversubscribed OpenMP threads
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"framework": framework, "workload": workload, "n_jobs": n_jobs, "n_trials": n_trials,
                    "wall_s": None, "cpu_s": None, "trials_timed": 0, "trial_median_s": None,
                    "trial_work_s": None, "processes": 0, "threads": None, "stopped_after_s": time_limit}
        wall = time.perf_counter() - start
        reap_descendants()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{framework} on {workload} failed:\n{err[-3000:]}")
        rows = [json.loads(line) for line in timings.read_text().splitlines()]
    durations = sorted(r["seconds"] for r in rows)
    return {
        "framework": framework, "workload": workload, "n_jobs": n_jobs, "n_trials": n_trials,
        "wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "trials_timed": len(rows), "trial_median_s": statistics.median(durations),
        "trial_work_s": sum(durations), "processes": len({r["pid"] for r in rows}),
        "threads": max(r.get("threads", 0) for r in rows),
        # hparam_joblib's own account of the threads its trials ran (its summary line)
        "summary_threads": next((line.strip() for line in out.splitlines() if "trial procs:" in line), None),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == workload]
        done = [r for r in mine if r["wall_s"] is not None]
        base = [r for r in done if r["framework"] == "joblib"] or done  # joblib stopped: the others' median
        if not base:
            continue
        floor = {k: statistics.median(r[k] for r in base) for k in ("wall_s", "trial_median_s", "cpu_s")}
        n = mine[0]
        lines.append(f"\n{workload}: {n['n_trials']} trials, n_jobs={n['n_jobs']} "
                     f"(median of {max(r.get('repeat', 0) for r in mine) + 1} repeat(s))")
        lines.append(f"  {'framework':<16}{'end-to-end s':>13}{'vs joblib':>10}{'per trial s':>12}"
                     f"{'vs joblib':>10}{'CPU s':>8}{'procs':>6}{'threads':>8}")
        for framework in FRAMEWORKS:
            runs = [r for r in mine if r["framework"] == framework and r["wall_s"] is not None]
            stopped = [r for r in mine if r["framework"] == framework and r["wall_s"] is None]
            if stopped and not runs:
                limit = f"> {stopped[0]['stopped_after_s']:.0f}"
                lines.append(f"  {framework:<16}{limit:>13}  (stopped: did not finish)")
            if not runs:
                continue
            wall = statistics.median(r["wall_s"] for r in runs)
            trial = statistics.median(r["trial_median_s"] for r in runs)
            cpu = statistics.median(r["cpu_s"] for r in runs)
            lines.append(f"  {framework:<16}{wall:>13.1f}{wall / floor['wall_s']:>10.2f}{trial:>12.3f}"
                         f"{trial / floor['trial_median_s']:>10.2f}{cpu:>8.1f}{runs[0]['processes']:>6}"
                         f"{max(r.get('threads') or 0 for r in runs):>8}")
    return "\n".join(lines)


def main() -> None:
    count_descendants()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="sklearn,torch,numpy,lightgbm,xgboost")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 trials per workload")
    parser.add_argument("--run-name", default="")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds before a run is stopped")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--recipe-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(json.loads(args.one))
        return
    if args.recipe_worker:
        _recipe_worker(json.loads(args.recipe_worker))
        return
    run_name = args.run_name or ("quick" if args.quick else "full")
    out = HERE / "results" / run_name
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"real workloads at n_jobs={args.n_jobs} on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    frameworks = args.frameworks.split(",")
    for workload in args.workloads.split(","):
        n_trials = 6 if args.quick else TRIALS[workload]
        for repeat in range(args.repeats):
            # Alternate the order between repeats: drift in the machine's load hits all alike.
            for framework in (frameworks if repeat % 2 == 0 else frameworks[::-1]):
                if framework == "joblib_1thread" and workload not in SELF_SIZED:
                    continue  # the same as joblib there: the thread variables reach every pool
                row = measure(framework, workload, args.n_jobs, n_trials, args.time_limit)
                row["repeat"] = repeat
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                if row["wall_s"] is None:
                    print(f"  {workload:<8} {framework:<16} stopped after {args.time_limit:.0f} s", flush=True)
                    continue
                print(f"  {workload:<8} {framework:<16} {row['wall_s']:6.1f} s end to end, "
                      f"{row['trial_median_s']:.3f} s per trial, {row['cpu_s']:.1f} CPU s, "
                      f"{row['threads']} threads", flush=True)
    meta = {"load_at_end": os.getloadavg(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "started": started,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     check=False, cwd=HERE).stdout.strip()}
    (out / "real_workloads.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "real_workloads.md").write_text(_table(rows) + "\n")
    print(_table(rows))
    print(f"\nwrote {out / 'real_workloads.json'} (load average at the end: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

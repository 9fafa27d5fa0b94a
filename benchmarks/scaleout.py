"""Scale-out: Dask + PostgreSQL beside loky + SQLite, on one machine, in one run.

For the zero-work and the sleep-bound (0.05 s) workloads at n_jobs 2 and 8, each combination of
backend (loky, dask with a LocalCluster) and storage (the SQLite file, a PostgreSQL server) runs
the same hparam_joblib search in a fresh process; the table gives end-to-end seconds (spawn to
return, start-up included) and the steady-state rate (trials/s between the 10th and 90th
percentile of completion times, read from the storage afterwards).

    python benchmarks/scaleout.py                    # full: 2 workloads x 2 n_jobs x 4 combos
    python benchmarks/scaleout.py --quick            # loky+SQLite and dask+PostgreSQL, 60 trials
    python benchmarks/scaleout.py --combos loky+sqlite,dask+postgresql   # as run_all.sh runs it

PostgreSQL: ``HPARAM_JOBLIB_BENCH_PG_URL=postgresql://user@host:port`` uses a running server (a
database per run is created in it); otherwise a throwaway server is started with
``scripts/pg_throwaway.sh`` (Debian's postgresql package) and stopped at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    REPO,
    base_parser,
    child_env,
    cpu_pressure,
    fmt,
    machine_info,
    markdown_table,
    results_dir,
    steady_rate,
    write_json,
)

CONFIG = REPO / "config" / "bench_scaling.yaml"
COMBOS = {
    "loky+sqlite": ("loky", "sqlite"),
    "dask+postgresql": ("dask", "postgresql"),
    "loky+postgresql": ("loky", "postgresql"),
    "dask+sqlite": ("dask", "sqlite"),
}
WORKLOADS = {"zero": "zero-work", "sleep": "sleep-bound (0.05 s)"}


# -- one point, in a fresh process ----------------------------------------------------------------
def child(spec: dict[str, Any]) -> None:
    """Run one search (``--child SPEC``) and print ``@@RESULT {...}``."""
    import _workloads
    import cloudpickle

    from hparam_joblib import hparam_search

    cloudpickle.register_pickle_by_value(_workloads)
    save_dir = Path(spec["save_dir"])
    train = hparam_search(config_path=str(CONFIG), save_db_directory=str(save_dir))(_workloads.train)
    sets = [
        f"n_jobs={spec['n_jobs']}", f"n_trials={spec['n_trials']}", f"tag={spec['tag']}",
        f"workload={spec['workload']}", f"backend={spec['backend']}", "dask_scheduler=local",
    ]
    if spec.get("storage_url"):
        sets.append(f"storage={spec['storage_url']}")
    t_start = time.time()
    result = train(argv=["--config", str(CONFIG), "--set", *sets])
    t_done = time.time()
    print("@@RESULT " + json.dumps({
        "t_start": t_start, "t_done": t_done, "counts": result.counts,
        "n_worker_pids": len(result.worker_pids), "storage_url": result.storage_url,
    }), flush=True)


def completions(storage: str, study_name: str) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage)
    return sorted(
        t.datetime_complete.timestamp() for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and t.datetime_complete is not None and t.state.name in ("COMPLETE", "PRUNED")
    )


def run_point(spec: dict[str, Any], pg_base: str | None, work: Path) -> dict[str, Any]:
    spec = dict(spec, tag=f"{spec['combo'].replace('+', '_')}_{spec['workload']}_{spec['n_jobs']}_{uuid.uuid4().hex[:6]}")
    spec["save_dir"] = str(work / "studies")
    storage_url = None
    if spec["storage"] == "postgresql":
        assert pg_base is not None
        dbname = f"bench_{uuid.uuid4().hex[:10]}"
        _pg_admin(pg_base, f"CREATE DATABASE {dbname}")
        storage_url = f"{pg_base}/{dbname}"
        spec["storage_url"] = storage_url
    pressure = cpu_pressure()
    t_popen = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=False, capture_output=True, text=True, cwd=str(REPO), env=child_env(), timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"run failed (exit {proc.returncode}): {spec}\n{proc.stderr[-3000:]}")
    raw = json.loads(lines[-1][len("@@RESULT "):])
    study_name = f"bench_scaling_{spec['tag']}"
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the postgresql extra installs psycopg2.
    url = storage_url.replace("postgresql://", "postgresql+psycopg2://", 1) if storage_url else f"sqlite:///{Path(spec['save_dir']).resolve() / (study_name + '.db')}"
    done = completions(url, study_name)
    if storage_url:
        _pg_admin(pg_base, f"DROP DATABASE IF EXISTS {storage_url.rsplit('/', 1)[1]} WITH (FORCE)")  # type: ignore[arg-type]
    e2e = raw["t_done"] - t_popen
    return {
        "spec": {k: v for k, v in spec.items() if k != "storage_url"},
        "e2e_s": e2e,
        "startup_s": raw["t_start"] - t_popen,
        "n_finished": len(done),
        "counts": raw["counts"],
        "n_worker_pids": raw["n_worker_pids"],
        "ss_rate": steady_rate(done),
        "e2e_rate": len(done) / e2e if e2e > 0 else None,
        "cpu_psi_avg10": pressure,
    }


# -- PostgreSQL ---------------------------------------------------------------------------------------
def _pg_admin(base: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{base}/postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class PgServer:
    """A running server's base URL: the given one, or a throwaway started for this script."""

    def __init__(self) -> None:
        self.dir: str | None = None
        self.base = os.environ.get("HPARAM_JOBLIB_BENCH_PG_URL", "").rstrip("/")

    def __enter__(self) -> str:
        if not self.base:
            self.dir = tempfile.mkdtemp(prefix="hj-bench-pg-")
            out = subprocess.run(
                ["bash", str(REPO / "scripts" / "pg_throwaway.sh"), "start", self.dir, "55471"],
                capture_output=True, text=True, check=True,
            ).stdout
            self.base = out.strip().split("=", 1)[1]
        return self.base

    def __exit__(self, *exc: object) -> None:
        if self.dir:
            subprocess.run(["bash", str(REPO / "scripts" / "pg_throwaway.sh"), "stop", self.dir], check=False,
                           capture_output=True)


# -- the table ------------------------------------------------------------------------------------------
def table(results: list[dict[str, Any]], combos: list[str]) -> str:
    rows = []
    for workload, label in WORKLOADS.items():
        for k in sorted({r["spec"]["n_jobs"] for r in results}):
            base = next((r for r in results if r["spec"]["combo"] == "loky+sqlite"
                         and r["spec"]["workload"] == workload and r["spec"]["n_jobs"] == k), None)
            for combo in combos:
                r = next((r for r in results if r["spec"]["combo"] == combo
                          and r["spec"]["workload"] == workload and r["spec"]["n_jobs"] == k), None)
                if r is None:
                    continue
                ratio = (r["ss_rate"] / base["ss_rate"]) if base and r["ss_rate"] and base["ss_rate"] else None
                rows.append([
                    label, k, combo, f"{r['n_finished']}/{r['spec']['n_trials']}",
                    r["n_worker_pids"], fmt(r["e2e_s"]), fmt(r["startup_s"]), fmt(r["ss_rate"]),
                    fmt(ratio, 2),
                ])
    return markdown_table(
        ["workload", "n_jobs", "backend+storage", "finished", "worker pids", "end-to-end s",
         "to search start s", "steady trials/s", "steady vs loky+SQLite"],
        rows,
    )


def plot(results: list[dict[str, Any]], combos: list[str], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return
    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(10, 3.8))
    for ax, workload in zip(axes, WORKLOADS):
        ks = sorted({r["spec"]["n_jobs"] for r in results})
        width = 0.8 / len(combos)
        for i, combo in enumerate(combos):
            vals = [next((r["ss_rate"] or 0 for r in results if r["spec"]["combo"] == combo
                          and r["spec"]["workload"] == workload and r["spec"]["n_jobs"] == k), 0) for k in ks]
            ax.bar([j + i * width for j in range(len(ks))], vals, width, label=combo)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ks))], [f"n_jobs={k}" for k in ks])
        ax.set_title(WORKLOADS[workload])
        ax.set_ylabel("steady-state trials/s")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    parser = base_parser(__doc__.splitlines()[0], "scaleout")
    parser.add_argument("--combos", default="", help=f"comma-separated subset of {','.join(COMBOS)}")
    args = parser.parse_args()
    combos = ["loky+sqlite", "dask+postgresql"] if args.quick else list(COMBOS)
    if args.combos:
        combos = [c.strip() for c in args.combos.split(",") if c.strip()]
        unknown = [c for c in combos if c not in COMBOS]
        if unknown:
            parser.error(f"unknown combos {unknown}; choose from {list(COMBOS)}")
    n_trials = {"zero": 60 if args.quick else 150, "sleep": 60 if args.quick else 120}
    out = results_dir(args.run_name)
    started = time.time()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hj-scaleout-") as tmp, PgServer() as pg_base:
        for workload in WORKLOADS:
            for k in (8, 2):
                for combo in combos:
                    backend, storage = COMBOS[combo]
                    spec = {"combo": combo, "backend": backend, "storage": storage, "workload": workload,
                            "n_jobs": k, "n_trials": n_trials[workload]}
                    r = run_point(spec, pg_base, Path(tmp))
                    results.append(r)
                    print(f"{combo:16s} {workload:5s} n_jobs={k}: {r['n_finished']} finished, "
                          f"e2e {r['e2e_s']:.1f} s, steady {fmt(r['ss_rate'])} trials/s", flush=True)
    text = table(results, combos)
    print(text)
    payload = {"machine": machine_info(), "seconds": time.time() - started, "results": results}
    write_json(out / "scaleout.json", payload)
    (out / "scaleout.md").write_text(text + "\n", encoding="utf-8")
    plot(results, combos, out / "scaleout.png")
    print(f"scaleout: {time.time() - started:.0f} s; results in {out}")


if __name__ == "__main__":
    main()

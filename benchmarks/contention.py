"""SQLite contention versus n_jobs: hparam_joblib's lock retries and storage-call latency, and the
trials that Optuna's plain multi-process recipe loses at the same n_jobs.

Objective: ``time.sleep(0.02)`` (short trials, so the workers spend a large share of their time
in storage calls). hparam_joblib's numbers come from ``SearchResult``: ``lock_retries`` and
``storage_ops`` (p50/p99/max wall time of every top-level storage call in the workers, lock waits
included). The recipe (k forked processes, each ``load_study`` + ``optimize(N/k)`` on the same
URL, Optuna defaults) has no retry: a 'database is locked' inside a trial ends that process,
and its remaining trials are lost (FAIL, left RUNNING, or never created).

Each point runs in a fresh process; n_jobs is swept from high to low after one discarded warm-up
run per framework; each point is repeated (--repeats) and the median is reported with the spread.

    python benchmarks/contention.py --run-name full
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CONFIG_DIR,
    base_parser,
    count_descendants,
    fmt,
    fmt_spread,
    machine_info,
    markdown_table,
    med,
    results_dir,
    run_point,
    write_json,
)

CONFIG = str(CONFIG_DIR / "bench_contention.yaml")


def trials_for(k: int) -> int:
    return max(30, 2 * k)


def main() -> None:
    count_descendants()
    p = base_parser(__doc__.splitlines()[0], "contention")
    p.add_argument("--n-jobs", default=None, help="comma-separated n_jobs points (default 64,32,16,8,4,2,1)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    points = [int(x) for x in (args.n_jobs or ("16,4,1" if args.quick else "64,32,16,8,4,2,1")).split(",")]
    points.sort(reverse=True)
    out = results_dir(args.run_name)
    started = time.monotonic()
    print("warm-up: one discarded run per framework (n_jobs=2, 10 trials)", flush=True)
    for fw in ("hparam_joblib", "optuna_procs"):
        run_point(
            {
                "framework": fw,
                "config": CONFIG,
                "n_jobs": 2,
                "n_trials": 10,
                "study_stem": "bench_contention_warm",
                "set": {"workload": "sleep", "sleep_s": 0.02},
            },
            out,
        )
    results: dict[str, dict[int, list[dict[str, Any]]]] = {"hparam_joblib": {}, "optuna_procs": {}}
    for k in points:
        n = trials_for(k)
        for rep in range(repeats):
            for fw in (
                ("hparam_joblib", "optuna_procs") if rep % 2 == 0 else ("optuna_procs", "hparam_joblib")
            ):
                r = run_point(
                    {
                        "framework": fw,
                        "config": CONFIG,
                        "n_jobs": k,
                        "n_trials": n,
                        "study_stem": f"bench_contention_{fw}_k{k}_r{rep}",
                        "set": {"workload": "sleep", "sleep_s": 0.02},
                    },
                    out,
                    keep_db=args.keep_dbs,
                )
                r.pop("trials", None)
                results[fw].setdefault(k, []).append(r)
                ops = r["raw"].get("storage_ops") or {}
                print(
                    f"  {fw:14s} n_jobs={k:<3d} N={n:<4d} rep {rep + 1}/{repeats}: lost {r['lost']} "
                    f"(states {r['states']}, {len(r['errors'])} exceptions), retries {r['raw'].get('lock_retries', '-')}, "
                    f"p50 {fmt(ops.get('p50_ms'))} ms, p99 {fmt(ops.get('p99_ms'))} ms, steady {fmt(r['ss_rate'])}/s, "
                    f"load {r['load1']:.1f}",
                    flush=True,
                )
    elapsed = time.monotonic() - started

    rows = []
    for k in sorted(points):
        hj = results["hparam_joblib"][k]
        pr = results["optuna_procs"][k]
        ops = [r["raw"].get("storage_ops") or {} for r in hj]
        excs = sorted({e.split(":")[0] for r in pr for e in r["errors"]})
        rows.append(
            [
                "1 (one worker + its warm trial process)" if k == 1 else str(k),
                str(trials_for(k)),
                fmt_spread([r["raw"].get("lock_retries") for r in hj], 0),
                fmt_spread([o.get("p50_ms") for o in ops]),
                fmt_spread([o.get("p99_ms") for o in ops]),
                fmt_spread([o.get("max_ms") for o in ops], 0),
                fmt_spread([o.get("count", 0) / max(1, r["n_finished"]) for o, r in zip(ops, hj)]),
                str(sum(r["lost"] for r in hj)),
                fmt_spread([r["ss_rate"] for r in hj]),
                fmt_spread([r["ss_rate"] for r in pr]),
                f"{sum(r['lost'] for r in pr)} of {len(pr) * trials_for(k)}",
                ", ".join(excs) or "-",
            ]
        )
    headers = [
        "n_jobs",
        "trials/run",
        "hj lock retries",
        "hj storage p50 ms",
        "hj storage p99 ms",
        "hj storage max ms",
        "hj storage calls/trial",
        "hj lost",
        "hj steady trials/s",
        "recipe steady trials/s",
        "recipe lost (all repeats)",
        "recipe exceptions",
    ]
    text = markdown_table(headers, rows)
    payload = {
        "script": "contention.py",
        "args": vars(args),
        "repeats": repeats,
        "machine": machine_info(),
        "elapsed_s": elapsed,
        "runs": {fw: {str(k): v for k, v in d.items()} for fw, d in results.items()},
    }
    write_json(out / "contention.json", payload)
    plot(results, points, out / "contention.png")
    (out / "contention.md").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"\n{repeats} repeat(s) per point, median (min-max). Took {elapsed:.0f} s. Results: {out}")


def plot(results: dict[str, dict[int, list[dict[str, Any]]]], points: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(points)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for key, label in (
        ("p50_ms", "storage call p50"),
        ("p99_ms", "storage call p99"),
        ("max_ms", "storage call max"),
    ):
        ys = [
            med((r["raw"].get("storage_ops") or {}).get(key) for r in results["hparam_joblib"][k]) for k in ks
        ]
        a1.plot(ks, ys, marker="o", label=f"hparam_joblib {label}")
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("n_jobs (1 = one worker process)")
    a1.set_ylabel("ms")
    a1.set_title("hparam_joblib storage-call latency (0.02 s trials)")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    retries = [med(r["raw"].get("lock_retries") for r in results["hparam_joblib"][k]) for k in ks]
    lost = [med(r["lost"] for r in results["optuna_procs"][k]) for k in ks]
    a2.plot(ks, retries, marker="o", label="hparam_joblib lock retries (per run)")
    a2.plot(ks, lost, marker="s", label="Optuna recipe lost trials (per run)")
    a2.set_xscale("log", base=2)
    a2.set_xlabel("n_jobs")
    a2.set_ylabel("count per run (median)")
    a2.set_title("Lock retries vs lost trials")
    a2.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

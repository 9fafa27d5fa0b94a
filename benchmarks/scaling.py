"""Throughput and parallel efficiency versus n_jobs: hparam_joblib against plain Optuna.

Four workloads (benchmarks/_workloads.py): ``cpu`` (a ~0.2 s pure-Python loop, calibrated at
start), ``sleep`` (0.05 s), ``zero`` (no work) and ``hetero`` (uniform 0.01-0.3 s sleep, seeded).
Each point runs in a fresh process, so end-to-end times include interpreter, import and worker
start-up. Frameworks, all on one SQLite file per run:

* ``hparam_joblib``: the decorated function called with ``--set n_jobs=k n_trials=N``;
* ``optuna_threads``: ``study.optimize(n_jobs=k)`` with Optuna's default ``RDBStorage``
  (``n_jobs=1`` is plain sequential Optuna);
* ``optuna_procs``: Optuna's multi-process recipe: k forked processes, each ``load_study`` on the
  same URL (defaults) and ``optimize(n_trials=N/k)``; no retries, so a lock error loses trials;
* ``optuna_journal``: the same recipe on one ``JournalFileBackend`` file (Optuna's advice for
  multi-process work on one machine);
* ``joblib``: ``joblib.Parallel(n_jobs=k)`` of the same function over random configs: no storage,
  no sampler, no isolation. The floor.

Steady-state rate = trials/s between the 10th and 90th percentile of the trials' completion
times (``datetime_complete``); end-to-end = from process start to the search returning.
One warm-up run per framework first (discarded: fills the page cache, nothing else survives).
n_jobs is swept from high to low; each point is repeated (--repeats) and the median is reported
with the min-max spread.

    python benchmarks/scaling.py --run-name full          # the README numbers
    python benchmarks/scaling.py --quick --run-name smoke
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CONFIG_DIR,
    LABELS,
    NPROC,
    base_parser,
    count_descendants,
    fmt,
    fmt_spread,
    machine_info,
    markdown_table,
    med,
    results_dir,
    run_point,
    spread,
    write_json,
)
from _workloads import calibrate_spin, parallel_check

CONFIG = str(CONFIG_DIR / "bench_scaling.yaml")
FRAMEWORKS = ("hparam_joblib", "joblib", "optuna_threads", "optuna_procs", "optuna_journal")
#: The Optuna peers hparam_joblib must be ahead of, end to end.
OPTUNA_PEERS = ("optuna_threads", "optuna_procs", "optuna_journal")


def plan(quick: bool) -> dict[str, dict[str, Any]]:
    """n_jobs points (high to low) and trials per run for each workload (sized for run_all.sh)."""
    if quick:
        return {
            "cpu": {"n_jobs": [2, 1], "trials": lambda k: 12},
            "sleep": {"n_jobs": [16, 2, 1], "trials": lambda k: max(20, 2 * k)},
            "zero": {"n_jobs": [2, 1], "trials": lambda k: 30},
            "hetero": {"n_jobs": [2, 1], "trials": lambda k: 12},
        }
    # Trials per run: enough for every worker to reach a steady state (>= 15 trials each up to
    # n_jobs=16), so that the steady-state rate is not start-up; n_jobs=32/64 on 2 cores are about
    # start-up, contention and lost trials (2 trials per worker) and run once ("repeats": a cap).
    # Zero-work runs are cheap and carry two targets: they always get 3 repeats.
    return {
        "cpu": {"n_jobs": [4, 2, 1], "trials": lambda k: 60},
        "sleep": {
            "n_jobs": [64, 32, 16, 8, 4, 2, 1],
            "trials": lambda k: max(30, 15 * k) if k <= 16 else 2 * k,
            "repeats": lambda k, r: r if k <= 16 else 1,
        },
        "zero": {"n_jobs": [2, 1], "trials": lambda k: 100, "repeats": lambda k, r: max(r, 3)},
        "hetero": {"n_jobs": [8, 4, 2, 1], "trials": lambda k: max(24, 8 * k)},
    }


WORKLOAD_SET = {
    "cpu": lambda iters: {"workload": "cpu", "cpu_iters": iters},
    "sleep": lambda iters: {"workload": "sleep", "sleep_s": 0.05},
    "zero": lambda iters: {"workload": "zero"},
    "hetero": lambda iters: {"workload": "hetero"},
}
TITLES = {
    "cpu": "CPU-bound (~0.2 s pure-Python loop)",
    "sleep": "sleep-bound (0.05 s)",
    "zero": "zero-work",
    "hetero": "heterogeneous (0.01-0.3 s sleep)",
}


def ideal(workload: str, k: int) -> int:
    """The best possible speedup over n_jobs=1: the cores for CPU work, k for sleeping trials."""
    return min(k, NPROC) if workload in ("cpu", "zero") else k


def point_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ss_rate": med(r["ss_rate"] for r in runs),
        "ss_rate_spread": spread([r["ss_rate"] for r in runs]),
        "e2e_s": med(r["e2e_s"] for r in runs),
        "e2e_s_spread": spread([r["e2e_s"] for r in runs]),
        "e2e_rate": med(r["e2e_rate"] for r in runs),
        "first_trial_s": med(r["first_trial_s"] for r in runs),
        "cpu_ms_per_trial": med(r["cpu_ms_per_trial"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "errors": sum(len(r["errors"]) for r in runs),
        "fail": sum(r["states"].get("FAIL", 0) for r in runs),
        "lock_retries": med(r["raw"].get("lock_retries") for r in runs),
        "repeats": len(runs),
    }


def table(workload: str, results: dict[str, dict[int, list[dict[str, Any]]]], points: list[int]) -> str:
    frameworks = [fw for fw in FRAMEWORKS if results.get(fw)]
    headers = ["n_jobs"]
    for fw in frameworks:
        headers += [f"{LABELS[fw]} steady trials/s", f"{LABELS[fw]} end-to-end s"]
    headers += ["hj speedup (eff.)", "hj end-to-end / fastest Optuna peer", "hj end-to-end / joblib",
                "lost: " + ", ".join(LABELS[fw] for fw in frameworks)]
    rows = []
    base = med(r["ss_rate"] for r in results["hparam_joblib"].get(1, []))
    for k in sorted(points):
        label = "1 (threads: plain sequential)" if k == 1 else str(k)
        row: list[Any] = [label]
        for fw in frameworks:
            runs = results[fw].get(k, [])
            if not runs and fw == "optuna_procs" and k == 1:
                row += ["= sequential", "= sequential"]
                continue
            row += [fmt_spread([r["ss_rate"] for r in runs]), fmt_spread([r["e2e_s"] for r in runs])]
        hj = med(r["ss_rate"] for r in results["hparam_joblib"].get(k, []))
        if hj and base:
            row.append(f"{hj / base:.2f} ({100 * hj / base / ideal(workload, k):.0f}%)")
        else:
            row.append("-")
        hj_e2e = med(r["e2e_s"] for r in results["hparam_joblib"].get(k, []))
        peer, peer_e2e = fastest_peer(results, k)
        row.append(f"{hj_e2e / peer_e2e:.2f} ({LABELS[peer]})" if hj_e2e and peer_e2e else "-")
        jl = med(r["e2e_s"] for r in results.get("joblib", {}).get(k, []))
        row.append(f"{hj_e2e / jl:.2f}" if hj_e2e and jl else "-")
        row.append(", ".join(str(sum(r["lost"] for r in results[fw].get(k, []))) for fw in frameworks))
        rows.append(row)
    return f"#### {TITLES[workload]}\n\n" + markdown_table(headers, rows)


def fastest_peer(results: dict[str, dict[int, list[dict[str, Any]]]], k: int) -> tuple[str, float | None]:
    """The Optuna peer with the shortest median end-to-end time at n_jobs=k (runs that lost
    trials do not count: they did less work)."""
    best: tuple[str, float | None] = ("optuna_threads", None)
    for fw in OPTUNA_PEERS:
        runs = [r for r in results.get(fw, {}).get(k, []) if not r["lost"]]
        e2e = med(r["e2e_s"] for r in runs)
        if e2e is not None and (best[1] is None or e2e < best[1]):
            best = (fw, e2e)
    return best


def cpu_table(
    results: dict[str, dict[str, dict[int, list[dict[str, Any]]]]], the_plan: dict[str, Any]
) -> str:
    """CPU seconds of all processes per finished trial: what each framework costs, and a number
    that noise from other load on the machine inflates far less than wall time."""
    rows = []
    for w in results:
        for k in sorted(the_plan[w]["n_jobs"]):
            row = [TITLES[w], str(k)]
            for fw in FRAMEWORKS:
                runs = results[w][fw].get(k, [])
                row.append(fmt_spread([r["cpu_ms_per_trial"] for r in runs], 0) if runs else "-")
            row.append(
                fmt(med(r["cpu_psi_avg10"] for fw in FRAMEWORKS for r in results[w][fw].get(k, [])), 0)
            )
            rows.append(row)
    return markdown_table(
        ["workload", "n_jobs"]
        + [f"{LABELS[fw]} CPU ms/trial" for fw in FRAMEWORKS]
        + ["CPU pressure before runs (PSI some avg10, %)"],
        rows,
    )


def targets(results: dict[str, dict[str, dict[int, list[dict[str, Any]]]]]) -> list[dict[str, Any]]:
    """The issue's targets that this script can check."""

    def ss(w: str, fw: str, k: int) -> float | None:
        return med(r["ss_rate"] for r in results.get(w, {}).get(fw, {}).get(k, []))

    def e2e(w: str, fw: str, k: int) -> float | None:
        return med(r["e2e_s"] for r in results.get(w, {}).get(fw, {}).get(k, []))

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = []

    def points(w: str) -> list[int]:
        return sorted(results.get(w, {}).get("hparam_joblib", {}))

    def add(name: str, value: float | None, goal: float, detail: str, higher: bool = True) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        out.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

    add(
        "cpu: hj steady-state speedup n_jobs=2 vs 1",
        ratio(ss("cpu", "hparam_joblib", 2), ss("cpu", "hparam_joblib", 1)),
        1.9,
        "steady trials/s ratio",
    )
    add(
        "cpu: hj end-to-end speedup n_jobs=2 vs 1 (start-up included)",
        ratio(e2e("cpu", "hparam_joblib", 1), e2e("cpu", "hparam_joblib", 2)),
        1.8,
        "end-to-end time ratio",
    )
    add(
        "cpu: hj end-to-end speedup n_jobs=2 vs 1 >= 1.85 (fixed-costs issue)",
        ratio(e2e("cpu", "hparam_joblib", 1), e2e("cpu", "hparam_joblib", 2)),
        1.85,
        "end-to-end time ratio",
    )
    every = [(w, k) for w in results for k in points(w)]
    ahead = [(w, k) for w, k in every
             if (hj := e2e(w, "hparam_joblib", k)) is not None
             and (peer := fastest_peer(results[w], k)[1]) is not None and hj <= peer]
    behind = ", ".join(f"{w}@{k}" for w, k in every if (w, k) not in ahead)
    add(
        "every point: hj end to end ahead of Optuna threads, SQLite and JournalFile recipes (points)",
        float(len(ahead)) if every else None,
        float(len(every)),
        f"behind at: {behind or 'none'}",
    )

    def cpu(w: str, fw: str, k: int) -> float | None:
        return med(r["cpu_ms_per_trial"] for r in results.get(w, {}).get(fw, {}).get(k, []))

    recipe_pts = [(w, k) for w, k in every if cpu(w, "optuna_procs", k) is not None]
    cheaper = [(w, k) for w, k in recipe_pts
               if (c := cpu(w, "hparam_joblib", k)) is not None and c <= cpu(w, "optuna_procs", k)]  # type: ignore[operator]
    add(
        "every point: hj CPU per trial at or below the SQLite recipe's (points)",
        float(len(cheaper)) if recipe_pts else None,
        float(len(recipe_pts)),
        "above at: " + (", ".join(f"{w}@{k}" for w, k in recipe_pts if (w, k) not in cheaper) or "none"),
    )
    for k in (1, 2):
        add(
            f"zero: hj steady rate vs the JournalFile recipe at n_jobs={k}",
            ratio(ss("zero", "hparam_joblib", k), ss("zero", "optuna_journal", k)),
            1.0,
            "steady trials/s ratio",
        )
    add(
        "cpu: hj vs Optuna threads at n_jobs=2",
        ratio(ss("cpu", "hparam_joblib", 2), ss("cpu", "optuna_threads", 2)),
        1.8,
        "steady trials/s ratio",
    )
    add(
        "zero: hj n_jobs=1 vs plain Optuna sequential (SQLite defaults)",
        ratio(ss("zero", "hparam_joblib", 1), ss("zero", "optuna_threads", 1)),
        2.0,
        "steady trials/s ratio",
    )
    add(
        "zero: hj vs Optuna k-procs recipe at n_jobs=2",
        ratio(ss("zero", "hparam_joblib", 2), ss("zero", "optuna_procs", 2)),
        1.5,
        "steady trials/s ratio",
    )
    add(
        "sleep: hj vs Optuna k-procs recipe at n_jobs=8",
        ratio(ss("sleep", "hparam_joblib", 8), ss("sleep", "optuna_procs", 8)),
        1.5,
        "steady trials/s ratio",
    )
    lost64 = results.get("sleep", {}).get("hparam_joblib", {}).get(64)
    add(
        "sleep: hj lost trials at n_jobs=64",
        None if not lost64 else float(sum(r["lost"] for r in lost64)),
        0,
        "all repeats",
        higher=False,
    )
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["target", "measured", "goal", "met?"],
        [
            [
                r["target"],
                fmt(r["value"], 2),
                ("<= " if "lost" in r["target"] else ">= ") + f"{r['goal']:g}"
                + (f" ({r['detail']})" if "points" in r["target"] else ""),
                {True: "yes", False: "**no**", None: "not measured"}[r["met"]],
            ]
            for r in rows
        ],
    )


def plot(results: dict[str, dict[str, dict[int, list[dict[str, Any]]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in TITLES if w in results]
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.5), squeeze=False)
    for col, w in enumerate(names):
        for fw in FRAMEWORKS:
            pts = sorted(results[w][fw])
            if not pts:
                continue
            for row, key in ((0, "ss_rate"), (1, "e2e_rate")):
                vals = [[r[key] for r in results[w][fw][k] if r[key] is not None] for k in pts]
                ys = [med(v) for v in vals]
                lo = [(y - min(v)) if v else 0 for y, v in zip(ys, vals)]
                hi = [(max(v) - y) if v else 0 for y, v in zip(ys, vals)]
                axes[row][col].errorbar(pts, ys, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[fw])
        hj1 = med(r["ss_rate"] for r in results[w]["hparam_joblib"].get(1, []))
        if hj1:
            pts = sorted(results[w]["hparam_joblib"])
            axes[0][col].plot(
                pts, [hj1 * ideal(w, k) for k in pts], "k:", label="ideal (hj n_jobs=1 x speedup)"
            )
        for row, what in ((0, "steady-state trials/s"), (1, "end-to-end trials/s (start-up incl.)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("n_jobs (1 = one worker process for hj)")
            ax.set_ylabel(what)
            ax.set_title(TITLES[w], fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].legend(fontsize=7)
    fig.suptitle(f"Throughput vs n_jobs on {NPROC} cores (median of repeats, bars = min-max)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    count_descendants()
    p = base_parser(__doc__.splitlines()[0], "scaling")
    p.add_argument("--workloads", default="cpu,sleep,zero,hetero", help="comma-separated subset")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    p.add_argument("--n-jobs", default=None, help="comma-separated subset of the n_jobs points (a re-check)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    out = results_dir(args.run_name)
    frameworks = [f for f in args.frameworks.split(",") if f]
    started = time.monotonic()

    iters = calibrate_spin(0.2)
    print(f"calibrated the CPU-bound trial: {iters} loop iterations ~ 0.2 s on one core", flush=True)
    checks = {"start": parallel_check(iters)}
    print(
        f"raw parallel capacity: 2 processes of the loop run {checks['start']:.2f}x one (2.00 = two free cores)",
        flush=True,
    )

    print("warm-up: one discarded run per framework (zero-work, n_jobs=2, 10 trials)", flush=True)
    for fw in frameworks:
        run_point(
            {
                "framework": fw,
                "config": CONFIG,
                "n_jobs": 2,
                "n_trials": 10,
                "study_stem": f"bench_scaling_warm_{fw}",
                "set": {"workload": "zero"},
            },
            out,
        )

    the_plan = plan(args.quick)
    if args.n_jobs:
        keep = {int(x) for x in args.n_jobs.split(",") if x}
        for spec_w in the_plan.values():
            spec_w["n_jobs"] = [k for k in spec_w["n_jobs"] if k in keep]
    wanted = [w for w in args.workloads.split(",") if w]
    results: dict[str, dict[str, dict[int, list[dict[str, Any]]]]] = {}
    for w in wanted:
        spec_w = the_plan[w]
        results[w] = {fw: {} for fw in FRAMEWORKS}
        for k in spec_w["n_jobs"]:  # high to low
            n = spec_w["trials"](k)
            reps = spec_w.get("repeats", lambda k, r: r)(k, repeats)
            for rep in range(reps):
                # Interleaved, and rotated per point and repeat: no framework always runs first.
                turn = (rep + spec_w["n_jobs"].index(k)) % len(frameworks)
                order = frameworks[turn:] + frameworks[:turn]
                for fw in order:
                    if fw == "optuna_procs" and k == 1:
                        continue  # one process running optimize() is sequential Optuna: the threads column
                    r = run_point(
                        {
                            "framework": fw,
                            "config": CONFIG,
                            "n_jobs": k,
                            "n_trials": n,
                            "study_stem": f"bench_scaling_{w}_{fw}_k{k}_r{rep}",
                            "set": WORKLOAD_SET[w](iters),
                        },
                        out,
                        keep_db=args.keep_dbs,
                    )
                    results[w][fw].setdefault(k, []).append(r)
                    print(
                        f"  {w:6s} {fw:15s} n_jobs={k:<3d} N={n:<4d} rep {rep + 1}/{reps}: steady "
                        f"{fmt(r['ss_rate'])}/s, end-to-end {r['e2e_s']:.1f} s, lost {r['lost']}, "
                        f"cpu {fmt(r['cpu_ms_per_trial'], 0)} ms/trial, load {r['load1']:.1f}",
                        flush=True,
                    )

    checks["end"] = parallel_check(iters)
    elapsed = time.monotonic() - started
    target_rows = targets(results)
    tables = [table(w, results[w], the_plan[w]["n_jobs"]) for w in wanted]
    payload = {
        "script": "scaling.py",
        "args": vars(args),
        "repeats": repeats,
        "machine": machine_info(),
        "cpu_iters": iters,
        "parallel_check": checks,
        "warmup": "one discarded run per framework (zero-work, n_jobs=2, 10 trials)",
        "elapsed_s": elapsed,
        "targets": target_rows,
        "summary": {
            w: {fw: {str(k): point_stats(rs) for k, rs in results[w][fw].items()} for fw in FRAMEWORKS}
            for w in wanted
        },
        "runs": {
            w: {
                fw: {
                    str(k): [{x: v for x, v in r.items() if x != "trials"} for r in rs]
                    for k, rs in results[w][fw].items()
                }
                for fw in FRAMEWORKS
            }
            for w in wanted
        },
    }
    write_json(out / "scaling.json", payload)
    png = out / "scaling.png"
    plot(results, png)
    text = (
        "\n\n".join(tables)
        + "\n\n#### CPU cost per trial (all processes; less sensitive to other load)\n\n"
        + cpu_table(results, the_plan)
        + "\n\n#### Targets\n\n"
        + targets_table(target_rows)
    )
    (out / "scaling.md").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    print(
        f"\n{repeats} repeat(s) per point, median (min-max). Raw 2-process speedup of the loop at start/end: "
        f"{checks['start']:.2f}/{checks['end']:.2f}. Took {elapsed:.0f} s. Results: {out}"
    )


if __name__ == "__main__":
    main()

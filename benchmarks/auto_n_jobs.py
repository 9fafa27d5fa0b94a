"""``n_jobs: auto`` against fixed n_jobs on a CPU-bound scikit-learn search, in one sitting.

Runs ``examples/sklearn_digits.py`` (HistGradientBoosting on the bundled digits data, 3-fold CV)
with ``--set n_jobs=<each> n_trials=<N>`` in a fresh directory per run, interleaved over
``--repeats`` rounds, and prints the wall time of each run and the median per setting, with the
machine's load. Writes ``benchmarks/results/auto_n_jobs_<time>.json``.

    python benchmarks/auto_n_jobs.py                       # n_jobs 1, 2, 4 and auto; 24 trials; 2 rounds
    python benchmarks/auto_n_jobs.py --settings 2,auto --trials 16 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(setting: str, trials: int) -> dict[str, object]:
    """One search in a scratch copy of the example; its wall time and what its summary says."""
    scratch = Path(tempfile.mkdtemp(prefix="hj_auto_bench_"))
    try:
        shutil.copy(REPO / "examples" / "sklearn_digits.py", scratch / "sklearn_digits.py")
        shutil.copytree(REPO / "config", scratch / "config")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "sklearn_digits.py", "--set", f"n_jobs={setting}", f"n_trials={trials}"],
            cwd=scratch, env=env, capture_output=True, text=True, timeout=1800, check=False,
        )
        wall = time.monotonic() - started
        auto = re.search(r"n_jobs auto:\s+(.*)", done.stdout)
        return {"setting": setting, "wall_s": round(wall, 2), "exit": done.returncode,
                "auto": auto.group(1).strip() if auto else "", "load": os.getloadavg()[0]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="1,2,4,auto")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = args.settings.split(",")
    runs = []
    for round_ in range(args.repeats):
        for setting in settings if round_ % 2 == 0 else list(reversed(settings)):
            result = run_once(setting, args.trials)
            runs.append(result)
            print(f"n_jobs={setting:>4}: {result['wall_s']:7.1f} s  exit {result['exit']}  "
                  f"load {result['load']:.1f}  {result['auto']}", flush=True)
    print(f"\n{args.trials} trials, {os.cpu_count()} cores; median wall time per setting:")
    for setting in settings:
        walls = [float(r["wall_s"]) for r in runs if r["setting"] == setting]  # type: ignore[arg-type]
        print(f"  n_jobs={setting:>4}: {statistics.median(walls):7.1f} s  ({', '.join(f'{w:.1f}' for w in walls)})")
    out = REPO / "benchmarks" / "results" / f"auto_n_jobs_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"trials": args.trials, "cores": os.cpu_count(), "runs": runs}, indent=2))
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

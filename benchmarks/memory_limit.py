"""Searches inside a real memory cgroup (#21): how n_jobs fixed and ``auto`` fare when memory,
not cores, limits how many trials fit side by side. Needs root (it creates the cgroup).

Each trial allocates and touches ``--trial-mib`` MiB (1 GiB by default), holds it
``--hold`` seconds and returns; the launcher is put in a fresh cgroup of ``--limit-mib`` MiB
before Python starts, so its workers and trial processes are in it too. For each limit and
setting it prints the trial states, the kernel's OOM kills (the cgroup's own counter), the exit
status and the wall time; JSON under ``benchmarks/results/``.

    python benchmarks/memory_limit.py                          # 3 GiB: n_jobs 2, 4, auto; 12 trials
    python benchmarks/memory_limit.py --limit-mib 3072,2048 --settings 2,4,auto
    python benchmarks/memory_limit.py --big-trial-mib 4096     # the 3rd trial does not fit even alone
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._cgroup import MemoryCgroup, unavailable

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''
import time
from hparam_joblib import hparam_search

@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    big = config.get("big_mib") and config["x"] == config["big_x"]  # the one configuration too big alone
    block = bytearray((config["big_mib"] if big else config["mib"]) * 2**20)
    for i in range(0, len(block), 4096):  # every page resident: charged to the cgroup
        block[i] = 1
    time.sleep(config["hold"])
    return config["x"]

if __name__ == "__main__":
    train()
'''

CONFIG = """experiment_name: mem
tag: {tag}
direction: minimize
n_jobs: {n_jobs}
n_trials: {trials}
sampler: {{type: random}}
mib: {mib}
hold: {hold}
sweep_parameters:
  x: {{type: float, low: 0.0, high: 1.0}}
"""

#: With ``--big-trial-mib``: the third configuration (x = 0.123456, re-runs included) takes that
#: much, a configuration too big even alone; random sampling never draws that x again.
BIG = """big_mib: {big}
big_x: 0.123456
enqueue: [{{x: 0.5}}, {{x: 0.6}}, {{x: 0.123456}}]
"""


def run_once(limit_mib: int, setting: str, trials: int, mib: int, hold: float, big: int = 0) -> dict[str, object]:
    scratch = Path(tempfile.mkdtemp(prefix="hj_mem_bench_"))
    group = MemoryCgroup(limit_mib)
    try:
        (scratch / "train.py").write_text(SCRIPT)
        (scratch / "config").mkdir()
        (scratch / "config" / "config.yaml").write_text(
            CONFIG.format(tag=f"n{setting}", n_jobs=setting, trials=trials, mib=mib, hold=hold)
            + (BIG.format(mib=mib, big=big) if big else ""))
        procs = shlex.quote(str(group.path / "cgroup.procs"))
        command = f"echo $$ > {procs} && exec {shlex.quote(sys.executable)} train.py"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        done = subprocess.run(["sh", "-c", command], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=1800, check=False)
        wall = time.monotonic() - started
        states: dict[str, int] = {}
        pruned: list[str] = []
        db = scratch / "optuna_studies" / f"mem_n{setting}.db"
        if db.exists():
            with closing(sqlite3.connect(db)) as conn:
                for state, count in conn.execute("SELECT state, COUNT(*) FROM trials GROUP BY state"):
                    states[state] = count
                pruned = [f"PRUNED trial {n}: {json.loads(v)}" for n, v in conn.execute(
                    "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a USING (trial_id) "
                    "WHERE t.state = 'PRUNED' AND a.key = 'failure_reason'")]
        lines = done.stdout.splitlines() + done.stderr.splitlines()
        said = [x.strip() for x in lines if "n_jobs auto:" in x or "running at most" in x
                or "running up to" in x or "fix the code" in x]
        return {"limit_mib": limit_mib, "n_jobs": setting, "exit": done.returncode, "wall_s": round(wall, 1),
                "states": states, "oom_kills": group.oom_kills(), "said": (pruned + said)[:6]}
    finally:
        group.remove()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mib", default="3072", help="comma-separated cgroup limits (MiB)")
    parser.add_argument("--settings", default="2,4,auto", help="comma-separated n_jobs values")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trial-mib", type=int, default=1024)
    parser.add_argument("--hold", type=float, default=1.5)
    parser.add_argument("--big-trial-mib", type=int, default=0,
                        help="the third trial allocates this much instead (one configuration too big alone)")
    args = parser.parse_args()
    why = unavailable()
    if why:
        print(f"memory_limit.py: {why}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    print(f"cores: {len(os.sched_getaffinity(0))}, load average {load:.1f}; each trial {args.trial_mib} MiB "
          f"held {args.hold:g} s, {args.trials} trials")
    print(f"{'limit MiB':>9}  {'n_jobs':>6}  {'exit':>4}  {'wall s':>6}  {'OOM kills':>9}  states")
    rows = []
    for limit in (int(x) for x in args.limit_mib.split(",")):
        for setting in args.settings.split(","):
            row = run_once(limit, setting.strip(), args.trials, args.trial_mib, args.hold, args.big_trial_mib)
            rows.append(row)
            states = ", ".join(f"{k} {v}" for k, v in sorted(row["states"].items()))  # type: ignore[union-attr]
            print(f"{limit:>9}  {setting:>6}  {row['exit']:>4}  {row['wall_s']:>6}  {row['oom_kills']:>9}  {states}")
            for line in row["said"]:  # type: ignore[union-attr]
                print(f"{'':>11}| {line[:260]}")
    out = REPO / "benchmarks" / "results" / f"memory_limit_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"load_average": load, "args": vars(args), "runs": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``--tune-n-jobs``: measure the user's own training function at a ladder of n_jobs values.

Each rung runs the real function for a bounded time in a throwaway study (a temporary
directory; the real study is never opened), then the table shows trials/s, speedup, parallel
efficiency and peak memory per worker, and recommends the smallest n_jobs within a few percent
of the best throughput.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from hparam_joblib._keys import CPU_SECONDS_KEY, PEAK_GPU_MIB_KEY
from hparam_joblib.config._algorithms import DEFAULT_PRUNER
from hparam_joblib.config._schema import SearchConfig, StopRules
from hparam_joblib.runtime.launcher._runner import run_search
from hparam_joblib.runtime.launcher._stop_state import rung_grace
from hparam_joblib.storage import StorageLocation, driver_url, location_for, open_study_readonly

logger = logging.getLogger("hparam_joblib")

#: A rung whose throughput is within this fraction of the best counts as "as good".
TOLERANCE = 0.05


@dataclass(frozen=True)
class Rung:
    """One measured n_jobs value."""

    n_jobs: int
    trials: int
    seconds: float
    rate: float
    peak_mib: float
    #: Trials still running when the rung's time (and its grace) was up, stopped and not counted.
    stopped: int = 0
    #: The rung's ``--tune-seconds``.
    budget: float = 0.0
    #: Mean CPU seconds of the rung's finished trials (``cpu_seconds``), 0 when unknown.
    cpu_per_trial: float = 0.0
    #: The largest GPU memory peak of the rung's trials (``peak_gpu_mib``), 0 when unknown.
    gpu_peak_mib: float = 0.0

    def speedup(self, base: Rung) -> float:
        """Throughput relative to the first rung (normally n_jobs=1)."""
        return self.rate / base.rate if base.rate > 0 else math.nan

    def efficiency(self, base: Rung) -> float:
        """Speedup per worker, relative to the first rung."""
        return self.speedup(base) * base.n_jobs / self.n_jobs


def default_ladder(cpu_count: int, configured: int) -> list[int]:
    """1, 2, 4, ... up to twice the cores, plus the configured n_jobs."""
    ladder = []
    k = 1
    while k <= max(2, 2 * cpu_count):
        ladder.append(k)
        k *= 2
    if configured not in ladder:
        ladder.append(configured)
    return sorted(ladder)


def stopped_trials(study: optuna.Study) -> int:
    """Trials of a rung that did not finish: stopped when its time was up (or lost to a dead worker)."""
    return sum(t.state == optuna.trial.TrialState.FAIL for t in study.get_trials(deepcopy=False))


def steady_rate(study: optuna.Study) -> tuple[int, float]:
    """(finished trials, trials/s from the first trial's start to the last completion).

    Worker start-up (imports, connections) happens before the first trial starts, so it is
    left out; what remains is the rate a long search would see.
    """
    trials = [
        t for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        and t.datetime_complete is not None and t.datetime_start is not None
    ]
    if not trials:
        return 0, 0.0
    first = min(t.datetime_start for t in trials if t.datetime_start is not None)
    last = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    span = (last - first).total_seconds()
    return len(trials), len(trials) / span if span > 0 else 0.0


def mean_cpu_seconds(study: optuna.Study) -> float:
    """The mean CPU seconds of the finished trials that recorded them (0.0: none did)."""
    seconds = [
        float(t.user_attrs[CPU_SECONDS_KEY]) for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE and isinstance(t.user_attrs.get(CPU_SECONDS_KEY), (int, float))
    ]
    return sum(seconds) / len(seconds) if seconds else 0.0


def max_gpu_peak(study: optuna.Study) -> float:
    """The largest peak GPU memory a trial recorded (0.0: none did)."""
    peaks = [float(t.user_attrs[PEAK_GPU_MIB_KEY]) for t in study.get_trials(deepcopy=False)
             if isinstance(t.user_attrs.get(PEAK_GPU_MIB_KEY), (int, float))]
    return max(peaks, default=0.0)


@dataclass(frozen=True)
class Resources:
    """What this machine gives the search: cores, memory that trials could still take, devices
    (and the memory of the smallest, when NVML or nvidia-smi can tell)."""

    cores: int
    memory_mib: float | None
    gpus: int = 0
    gpu_memory_mib: float | None = None


def what_limits(pick: Rung, resources: Resources) -> str:
    """Which resource the recommended n_jobs runs into, from what the rungs measured: the cores
    (the trials' CPU seconds per second against the cores), memory (one more trial's peak would
    not fit), the GPUs (one trial per device), or none of them (the trials wait on something
    else: I/O, the database, a lock)."""
    busy = pick.rate * pick.cpu_per_trial  # cores kept busy by trial code at this rung
    facts = []
    if pick.cpu_per_trial > 0:
        facts.append(f"the trials use {busy:.1f} of {resources.cores} cores ({busy / resources.cores:.0%})")
    room = None
    if resources.memory_mib is not None and pick.peak_mib > 0:
        room = int(resources.memory_mib // pick.peak_mib)
        facts.append(f"each trial peaks at {pick.peak_mib:.0f} MiB of {resources.memory_mib:.0f} MiB free: "
                     f"room for about {room} at once")
    if resources.gpus:
        facts.append(f"{resources.gpus} GPU(s), one trial each")
    if pick.gpu_peak_mib > 0:
        of = f" of {resources.gpu_memory_mib:.0f} MiB per device" if resources.gpu_memory_mib else ""
        facts.append(f"each trial peaks at {pick.gpu_peak_mib:.0f} MiB of GPU memory{of}")
    if pick.cpu_per_trial > 0 and busy >= 0.8 * resources.cores:
        limit = "the cores"
    elif room is not None and room <= pick.n_jobs:
        limit = "memory"
    elif resources.gpus and pick.n_jobs >= resources.gpus:
        limit = "the GPUs"
    elif pick.cpu_per_trial > 0 and room is not None:
        limit = "neither cores nor memory: the trials wait on something else (I/O, the database, a lock)"
    else:
        limit = "unknown (no trial recorded its CPU seconds or peak memory)"
    return f"what limits it at n_jobs={pick.n_jobs}: {limit}" + (f" ({'; '.join(facts)})" if facts else "")


def run_ladder(
    func: Callable[[dict[str, Any]], Any],
    cfg: SearchConfig,
    ladder: Sequence[int],
    seconds: float,
) -> list[Rung]:
    """Run the function for ``seconds`` at each n_jobs of ``ladder`` (highest first).

    Each rung is bounded: from its first trial on, its loops start trials for ``seconds``, and
    the trials still running :func:`rung_grace` later are stopped (``RungStop``), so a rung
    takes its workers' start-up plus at most ``seconds + rung_grace(seconds)``.

    Without the pruner: how many trials it prunes, and so how long they run, depends on the
    order in which trials finish, which differs between rungs (with a median pruner n_jobs=2
    measured 126 % efficiency on 2 cores); every rung runs whole trials instead.
    """
    scratch = Path(tempfile.mkdtemp(prefix="hparam_joblib_tune_"))
    rungs: list[Rung] = []
    storage = cfg.storage
    if storage.kind == "journal":  # a throwaway journal in the scratch directory, not the user's file
        storage = dataclasses.replace(storage, path=None)
    # On a server the rungs are throwaway studies beside the real one (measured where the real
    # search will run), with a unique name, deleted after each rung.
    suffix = f"_{uuid.uuid4().hex[:8]}" if storage.kind == "postgresql" else ""
    try:
        for n_jobs in sorted(set(ladder), reverse=True):  # high to low: warm caches hurt no rung
            rung_cfg = dataclasses.replace(
                cfg, n_jobs=n_jobs, n_trials=10**9, tag=f"{cfg.tag}_tune{n_jobs}{suffix}", storage=storage,
                stop=StopRules(),  # a rung is timed by --tune-seconds, not by the search's stop rules
                pruner=DEFAULT_PRUNER,
            )
            logger.info("tune: n_jobs=%d for %.0f s", n_jobs, seconds)
            result = run_search(func, rung_cfg, scratch, run_seconds=seconds, show_progress=False)
            location = location_for(rung_cfg, scratch)
            with open_study_readonly(location, rung_cfg.study_name) as study:
                trials, rate = steady_rate(study)
                stopped = stopped_trials(study)
                cpu = mean_cpu_seconds(study)
                gpu = max_gpu_peak(study)
            rungs.append(Rung(n_jobs, trials, result.wall_time, rate, result.peak_trial_mib, stopped, seconds, cpu,
                              gpu))
            if location.is_server:
                _drop_study(location, rung_cfg.study_name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sorted(rungs, key=lambda r: r.n_jobs)


def _drop_study(location: StorageLocation, study_name: str) -> None:
    """Delete a throwaway rung study from a server (best effort)."""
    try:
        optuna.delete_study(study_name=study_name, storage=driver_url(location.url))
    except Exception as err:  # noqa: BLE001 - a leftover rung study is harmless
        logger.warning("tune: could not delete the rung study %s (%s)", study_name, type(err).__name__)


def recommend(rungs: Sequence[Rung]) -> Rung:
    """The smallest n_jobs whose throughput is within TOLERANCE of the best."""
    best = max(r.rate for r in rungs)
    return next(r for r in rungs if r.rate >= (1 - TOLERANCE) * best)


def format_table(rungs: Sequence[Rung], resources: Resources | None = None) -> str:
    """A plain-text table of the ladder, what each rung stopped, the recommendation and (with
    ``resources``) what limits it."""
    base = rungs[0]
    seconds = base.budget
    lines = [
        (f"{'n_jobs':>6}  {'trials':>6}  {'stopped':>7}  {'trials/s':>9}  {'speedup':>7}  {'efficiency':>10}  "
         f"{'peak MiB/trial':>14}  {'rung s':>6}"),
    ]
    for r in rungs:
        lines.append(
            f"{r.n_jobs:>6}  {r.trials:>6}  {r.stopped:>7}  {r.rate:>9.3f}  {r.speedup(base):>7.2f}  "
            f"{r.efficiency(base):>10.2f}  {r.peak_mib:>14.0f}  {r.seconds:>6.1f}"
        )
    grace = rung_grace(seconds)
    lines.append("")
    lines.append(
        f"each rung ran trials for {seconds:g} s from its first trial; trials still running {grace:g} s "
        "after that were stopped ('stopped', not counted in trials/s); 'rung s' is the rung's whole "
        "time, its workers' start-up included"
    )
    empty = [r.n_jobs for r in rungs if r.trials == 0]
    if empty:
        lines.append(
            f"no trial finished at n_jobs={', '.join(map(str, empty))}: a trial takes longer than "
            f"--tune-seconds {seconds:g} (+ {grace:g} s) there; run again with a larger --tune-seconds "
            "(a few trials' time) before trusting this table"
        )
    lines.append("")
    if len(empty) == len(rungs):
        lines.append("no recommendation: no rung finished a trial")
        return "\n".join(lines)
    pick = recommend(rungs)
    lines.append(
        f"recommended: n_jobs={pick.n_jobs} (smallest within {TOLERANCE:.0%} of the best throughput); "
        f"run with: --set n_jobs={pick.n_jobs}"
    )
    if resources is not None:
        lines.append(what_limits(pick, resources))
    return "\n".join(lines)


def save_plot(rungs: Sequence[Rung], path: Path) -> None:
    """Throughput and efficiency versus n_jobs as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rungs[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r.n_jobs for r in rungs]
    ax.plot(xs, [r.rate for r in rungs], "o-", label="trials/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_jobs")
    ax.set_ylabel("trials/s")
    ax2 = ax.twinx()
    ax2.plot(xs, [r.efficiency(base) for r in rungs], "s--", color="tab:orange", label="efficiency")
    ax2.set_ylabel("parallel efficiency")
    ax2.set_ylim(0, 1.2)
    ax.set_title(f"--tune-n-jobs ({datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

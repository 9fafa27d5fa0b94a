"""The training functions the benchmarks run, shared by hparam_joblib and the plain-Optuna peers.

Every framework calls ``train(config)`` with the same config dict (fixed keys from the YAML file
plus the sampled ``x0, x1, x2``). ``config["workload"]`` picks what a trial does:

* ``zero``: nothing (measures the framework's per-trial overhead);
* ``sleep``: ``time.sleep(sleep_s)`` (I/O- or GPU-bound training: the process is idle);
* ``cpu``: a pure-Python loop of ``cpu_iters`` iterations (holds the GIL; calibrated to ~0.2 s);
* ``hetero``: sleep for a duration drawn uniformly from ``[hetero_low, hetero_high]``, seeded by
  the trial's sampled parameters (deterministic per parameter set, i.i.d. across trials).

hparam_joblib's trial processes import this module by name (``benchmarks/`` is on the
launcher's ``sys.path``, which they inherit); keep it self-contained: standard library only, no
imports from the rest of ``benchmarks/``.
"""

from __future__ import annotations

import random
import time
from typing import Any


def spin(iterations: int) -> int:
    """A pure-Python CPU loop (holds the GIL the whole time)."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate_spin(target_s: float = 0.2, rounds: int = 5) -> int:
    """Iterations of :func:`spin` that take ``target_s`` seconds here (median of ``rounds``)."""
    n = 200_000
    while True:  # grow until one call is long enough to time well
        start = time.perf_counter()
        spin(n)
        took = time.perf_counter() - start
        if took > 0.05:
            break
        n *= 2
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        spin(n)
        rates.append(n / (time.perf_counter() - start))
    rates.sort()
    return max(1, int(rates[len(rates) // 2] * target_s))


def _timed_spin(iterations: int) -> float:
    start = time.perf_counter()
    spin(iterations)
    return time.perf_counter() - start


def parallel_check(iterations: int, procs: int = 2) -> float:
    """Speedup of ``procs`` forked processes running the loop at once vs one process alone: how
    many cores the machine is really giving us right now (2.0 on two idle cores)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        pool.map(_timed_spin, [iterations // 10] * procs)  # start the workers
        start = time.perf_counter()
        pool.map(_timed_spin, [iterations], chunksize=1)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        pool.map(_timed_spin, [iterations] * procs, chunksize=1)
        together = time.perf_counter() - start
    return procs * alone / together


def _loss(config: dict[str, Any]) -> float:
    return float(sum(float(config.get(f"x{i}", 0.0)) ** 2 for i in range(3)))


def hetero_seconds(config: dict[str, Any]) -> float:
    """The heterogeneous workload's duration for this parameter set."""
    seed = hash(tuple(round(float(config.get(f"x{i}", 0.0)), 12) for i in range(3))) ^ int(
        config.get("hetero_seed", 0)
    )
    low = float(config.get("hetero_low", 0.01))
    high = float(config.get("hetero_high", 0.3))
    return random.Random(seed).uniform(low, high)


def train(config: dict[str, Any]) -> float:
    """Do the configured amount of work and return a loss to minimise."""
    kind = config.get("workload", "zero")
    if kind == "sleep":
        time.sleep(float(config["sleep_s"]))
    elif kind == "cpu":
        spin(int(config["cpu_iters"]))
    elif kind == "hetero":
        time.sleep(hetero_seconds(config))
    elif kind != "zero":
        raise ValueError(f"unknown workload {kind!r}")
    return _loss(config)

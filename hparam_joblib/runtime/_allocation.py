"""How many cores this launch may use: what ``n_jobs: -1`` and the threads per trial divide.

loky's ``cpu_count()`` (joblib's) already honours the CPU affinity (``taskset``, a cpuset), a
cgroup CPU quota (a container, a SLURM job with ``ConstrainCores``) and ``LOKY_MAX_CPU_COUNT``.
A batch scheduler that does not bind its jobs to cores (SLURM with ``TaskPlugin=task/none``, or
without cgroups) leaves all of that at the node's size, so two ``-c 1`` jobs on one node would
each size their trials for the whole node: the job's allocation, ``SLURM_CPUS_PER_TASK`` (the
``-c`` of this task), else ``SLURM_CPUS_ON_NODE`` (the job's CPUs on this node), caps it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: The variables of a SLURM allocation, in the order they are trusted.
SLURM_CPU_VARIABLES: tuple[str, ...] = ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")


def allocated_cores(environ: Mapping[str, str] | None = None) -> int:
    """The cores this process may use (at least 1); see the module's docstring."""
    from loky import cpu_count

    return max(1, min([int(cpu_count()), *_scheduler_cores(os.environ if environ is None else environ)]))


def cores_source(environ: Mapping[str, str] | None = None) -> str:
    """Where :func:`allocated_cores` came from, for ``--dry-run`` and the summary."""
    from loky import cpu_count

    env = os.environ if environ is None else environ
    for var in SLURM_CPU_VARIABLES:
        value = _positive(env.get(var))
        if value is not None and value < cpu_count():
            return f"cores ({var}={value})"
    return "cores"


def _scheduler_cores(environ: Mapping[str, str]) -> list[int]:
    for var in SLURM_CPU_VARIABLES:
        value = _positive(environ.get(var))
        if value is not None:
            return [value]
    return []


def _positive(text: str | None) -> int | None:
    try:
        value = int(str(text).split("(")[0])  # SLURM writes "2(x3)" in some of its counts
    except ValueError:
        return None
    return value if value > 0 else None

"""Which kernel counter says a SIGKILLed trial was out of memory (runtime/trial/_memory), on
cgroup v1 and v2 trees laid out as the kernel does (the real v1 case: test_memory_cgroup.py)."""

from __future__ import annotations

from pathlib import Path

from hparam_joblib.runtime.trial._memory import MemoryCounters, counters, limit_mib, memory_cgroup, oom_cause


def _v1(tmp_path: Path, *, oom_kill: bool = True) -> Path:
    root = tmp_path / "cg"
    job = root / "memory" / "slurm" / "job_7"
    job.mkdir(parents=True)
    for d, limit in ((root / "memory", 2**63 - 4096), (root / "memory" / "slurm", 2**63 - 4096), (job, 600 * 2**20)):
        (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (d / "memory.failcnt").write_text("0\n")
        (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n" + ("oom_kill 0\n" if oom_kill else ""))
    proc = tmp_path / "cgroup"
    proc.write_text("5:memory:/slurm/job_7\n4:cpu,cpuacct:/slurm/job_7\n0::/\n")
    return proc


def test_cgroup_v1_oom_kill_counter(tmp_path: Path) -> None:
    proc = _v1(tmp_path)
    group = memory_cgroup(str(proc), tmp_path / "cg")
    assert group is not None and group.version == 1 and group.path == "/slurm/job_7"
    assert limit_mib(group) == 600
    before = counters(group)
    (tmp_path / "cg/memory/slurm/job_7/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert oom_cause(group, before, counters(group)) == "the memory cgroup's limit of 600 MiB (cgroup v1 /slurm/job_7)"
    assert oom_cause(group, before, before) is None


def test_cgroup_v1_without_the_counter_uses_failcnt(tmp_path: Path) -> None:
    """Kernels before 4.13 have no oom_kill in memory.oom_control: the usage hitting the limit
    (failcnt) beside a SIGKILL says it."""
    proc = _v1(tmp_path, oom_kill=False)
    group = memory_cgroup(str(proc), tmp_path / "cg")
    before = counters(group)
    assert before.cgroup_oom is None and before.failcnt == 0
    (tmp_path / "cg/memory/slurm/job_7/memory.failcnt").write_text("42\n")
    assert oom_cause(group, before, counters(group)) is not None


def test_cgroup_v2_memory_events(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    job = root / "user.slice" / "job"
    job.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (job / "memory.max").write_text(f"{3 * 2**30}\n")
    (root / "user.slice" / "memory.max").write_text("max\n")
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/job\n")
    group = memory_cgroup(str(proc), root)
    assert group is not None and group.version == 2
    assert limit_mib(group) == 3072
    before = counters(group)
    (job / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    assert oom_cause(group, before, counters(group)) == "the memory cgroup's limit of 3072 MiB (cgroup v2 /user.slice/job)"


def test_the_machine_wide_oom_killer() -> None:
    """No cgroup counter moved but /proc/vmstat's oom_kill did: the machine ran out."""
    before = MemoryCounters(None, None, 4)
    assert str(oom_cause(None, before, MemoryCounters(None, None, 5))).startswith("the machine's memory")
    assert oom_cause(None, before, MemoryCounters(None, None, 4)) is None
    assert oom_cause(None, MemoryCounters(None, None, None), MemoryCounters(None, None, None)) is None


def test_a_kill_counted_in_a_cgroup_without_a_limit_is_the_machines(tmp_path: Path) -> None:
    """The kernel counts every OOM kill in the victim's cgroup: with no limit there (a login
    session's cgroup), the machine ran out, not a limit."""
    root = tmp_path / "cg"
    session = root / "user.slice"
    session.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory\n")
    (session / "memory.max").write_text("max\n")
    (session / "memory.events").write_text("oom 0\noom_kill 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice\n")
    group = memory_cgroup(str(proc), root)
    assert group is not None and limit_mib(group) is None
    before = counters(group)
    (session / "memory.events").write_text("oom 0\noom_kill 1\n")
    assert str(oom_cause(group, before, counters(group))).startswith("the machine's memory")


def test_headroom_is_taken_at_the_level_that_has_the_limit(tmp_path: Path) -> None:
    """A SLURM job's limit sits on the job's cgroup; this process is in a step below it that holds
    only part of the job's usage: the room is the job's limit less the job's usage, not less the
    step's (other steps of the job count too)."""
    from hparam_joblib.runtime.trial._memory import headroom_mib

    root = tmp_path / "cg"
    job = root / "memory" / "slurm" / "job_7"
    step = job / "step_0"
    step.mkdir(parents=True)
    for d, limit, used in ((root / "memory", 2**63 - 4096, 9 * 2**30), (root / "memory" / "slurm", 2**63 - 4096, 5 * 2**30),
                           (job, 4 * 2**30, 3 * 2**30), (step, 2**63 - 4096, 1 * 2**30)):
        (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (d / "memory.usage_in_bytes").write_text(f"{used}\n")
        (d / "memory.stat").write_text("total_inactive_file 0\n")
    proc = tmp_path / "cgroup"
    proc.write_text("5:memory:/slurm/job_7/step_0\n0::/\n")
    group = memory_cgroup(str(proc), root)
    assert group is not None and limit_mib(group) == 4096
    available = next(int(x.split()[1]) / 1024 for x in Path("/proc/meminfo").read_text().splitlines()
                     if x.startswith("MemAvailable:"))  # the machine's own bound, also taken
    assert headroom_mib(group) == min(1024.0, available)  # 4 GiB limit less the job's 3 GiB (not the step's 1)
    (job / "memory.stat").write_text("total_inactive_file 536870912\n")  # page cache the kernel reclaims first
    assert headroom_mib(group) == min(1536.0, available)

"""The study attribute keys are an on-disk contract: defined once, never renamed."""

from __future__ import annotations

import re
from pathlib import Path

import hparam_joblib
from hparam_joblib import _keys

PACKAGE = Path(hparam_joblib.__file__).resolve().parent

#: What studies on disk hold today. A change here breaks every study written before it.
CONTRACT = {
    "RETIRED_KEY": "hparam_joblib:retired",
    "ENQUEUED_KEY": "hparam_joblib:enqueued",
    "MLFLOW_PARENT_KEY": "hparam_joblib:mlflow_parent_run",
    "LAUNCHER_KEY_PREFIX": "hparam_joblib:launcher:",
    "STOP_KEY_PREFIX": "hparam_joblib:stop:",
    "RUNS_KEY": "runs",
    "STUDY_CONFIG_KEY": "config",
    "OWNER_KEY": "hparam_joblib:owner",
    "CONFIG_KEY": "config",
    "FAILURE_REASON_KEY": "failure_reason",
    "FAILURE_KIND_KEY": "failure_kind",
    "FAILURE_TYPE_KEY": "failure_type",
    "FAILURE_TRACEBACK_KEY": "failure_traceback",
    "FAILURE_EXIT_CODE_KEY": "failure_exit_code",
    "PRUNED_STEP_KEY": "pruned_step",
    "LOG_FILE_KEY": "log_file",
    "GPU_KEY": "gpu",
    "PEAK_RSS_MIB_KEY": "peak_rss_mib",
    "PEAK_GPU_MIB_KEY": "peak_gpu_mib",
    "CPU_SECONDS_KEY": "cpu_seconds",
    "TRIAL_PID_KEY": "trial_pid",
    "RERUN_OF_KEY": "rerun_of",
    "ERROR": "error",
    "PRUNER": "pruner",
    "TIMEOUT": "timeout",
    "WORKER_DIED": "worker_died",
    "INTERRUPTED": "interrupted",
    "OUT_OF_MEMORY": "out_of_memory",
    "OUT_OF_MEMORY_BESIDE": "out_of_memory_beside",
}

#: A call that writes an attr, with a string literal where the key goes.
_LITERAL_WRITE = re.compile(
    r"""set_(?:user_attr|(?:trial|study)_(?:user|system)_attr)\((?:[^,()]+,\s*)?["']"""
)
_LITERAL_KEY = re.compile(r"""["']hparam_joblib:[a-z_]+:?["']""")


def test_every_key_keeps_its_value() -> None:
    """Each key still names what studies on disk hold, and no key is left out of the contract."""
    defined = {name: value for name, value in vars(_keys).items() if name.isupper()}
    assert defined == CONTRACT


def test_no_module_writes_a_key_spelled_out() -> None:
    """Attr keys are written through the constants of ``_keys``, never as literals elsewhere."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_keys.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _LITERAL_WRITE.search(line) or _LITERAL_KEY.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []

"""Every attribute key hparam_joblib writes into a study: the on-disk contract.

Studies outlive the version that wrote them (a resumed search, ``hparam-joblib status``,
``--best``, the dashboard, a user's ``optuna.load_study``), so every name and value here is read
back by later versions. Never rename or re-purpose one: add a new key and keep reading the old.
Keys of our own bookkeeping carry the ``hparam_joblib:`` prefix; keys a user reads in the
dashboard (``config``, ``failure_reason``, ...) are plain.

No module writes a key that is not here (``grep`` for the constant to find every reader).
"""

from __future__ import annotations

# --- Study system attrs ------------------------------------------------------------------------
#: Numbers of the error trials ``--retry-failed`` retired (they stay PRUNED, no longer counted).
RETIRED_KEY = "hparam_joblib:retired"
#: Digests of the ``enqueue_trials`` entries already queued (each is queued once per study).
ENQUEUED_KEY = "hparam_joblib:enqueued"
#: ``{"<tracking_uri> <experiment>": run id}`` of the MLflow parent run, so a resumed search adds to it.
MLFLOW_PARENT_KEY = "hparam_joblib:mlflow_parent_run"
#: ``+ run id``: a launcher's lease (``{beat, host, pid, stopped[, reason]}``), renewed while it lives.
LAUNCHER_KEY_PREFIX = "hparam_joblib:launcher:"
#: ``+ run id``: why a run's stop rule ended it (``{"why": text, "at": time.time()}``).
STOP_KEY_PREFIX = "hparam_joblib:stop:"

# --- Study user attrs --------------------------------------------------------------------------
#: The run history: one entry per launch (what it used, when, how it ended).
RUNS_KEY = "runs"
#: The resolved YAML config of the latest launch (``--best``, ``status``). Same name as the trial's.
STUDY_CONFIG_KEY = "config"

# --- Trial system attrs ------------------------------------------------------------------------
#: Who runs the trial: ``{host, pid, start, run}`` (dead-owner reaping, "which launch ran it").
OWNER_KEY = "hparam_joblib:owner"

# --- Trial user attrs --------------------------------------------------------------------------
#: The trial's whole config dict as the training function received it.
CONFIG_KEY = "config"
#: One line (or a few) saying why a trial did not complete.
FAILURE_REASON_KEY = "failure_reason"
#: One of the failure kinds below.
FAILURE_KIND_KEY = "failure_kind"
#: The exception's type name, its traceback (last 20,000 characters), a crashed process's exit code.
FAILURE_TYPE_KEY = "failure_type"
FAILURE_TRACEBACK_KEY = "failure_traceback"
FAILURE_EXIT_CODE_KEY = "failure_exit_code"
#: The step at which the pruner stopped the trial.
PRUNED_STEP_KEY = "pruned_step"
#: The trial's log file (``trial_output: file``), the GPU it ran on, its peak RSS and process id.
LOG_FILE_KEY = "log_file"
GPU_KEY = "gpu"
PEAK_RSS_MIB_KEY = "peak_rss_mib"
#: Trial user attr: the trial's peak GPU memory in MiB, where PyTorch, NVML or nvidia-smi can tell.
PEAK_GPU_MIB_KEY = "peak_gpu_mib"
#: Trial user attr: CPU seconds the trial used (its process and reaped children, user + system).
CPU_SECONDS_KEY = "cpu_seconds"
TRIAL_PID_KEY = "trial_pid"
#: Trial user attr: the number of the trial whose configuration this one runs again (that one was
#: killed for memory beside other trials: not the configuration's fault).
RERUN_OF_KEY = "rerun_of"

# --- Values stored under FAILURE_KIND_KEY ---------------------------------------------------------
ERROR = "error"
PRUNER = "pruner"
TIMEOUT = "timeout"
WORKER_DIED = "worker_died"
INTERRUPTED = "interrupted"
OUT_OF_MEMORY = "out_of_memory"
OUT_OF_MEMORY_BESIDE = "out_of_memory_beside"

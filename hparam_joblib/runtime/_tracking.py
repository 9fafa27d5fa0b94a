"""MLflow tracking (``tracking: {mlflow: {...}}``): one parent run per search, one nested run per trial.

The launcher only finds (or creates) the experiment and the search's parent run, whose id is kept
in the study's system attrs (:data:`MLFLOW_PARENT_KEY`), so a resumed search adds to the same run. Each
worker writes the nested runs of the trials it ran, from a background thread, after Optuna has
recorded the trial: a slow or unreachable tracking server never delays, fails or stops a trial.

What happens when the server is unreachable: a trial's run is kept in the worker's memory and
retried every :data:`RETRY_SECONDS` (one warning per worker when the first write fails); when the
worker ends it waits for what is queued as long as the server makes progress, and
:data:`FLUSH_SECONDS` without a run written, then drops what is left with one warning that counts
the runs not written (the Optuna study always has every trial). A run whose create_run answer was
lost is found again by its tags on the retry, so no trial gets two runs. A launcher
that cannot reach the server at the start says so once and the search runs untracked.

``mlflow`` is imported only when a search is tracked (``pip install "hparam_joblib[mlflow]"``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hparam_joblib._keys import (
    CONFIG_KEY,
    FAILURE_REASON_KEY,
    FAILURE_TYPE_KEY,
    GPU_KEY,
    LOG_FILE_KEY,
    MLFLOW_PARENT_KEY,
    PEAK_GPU_MIB_KEY,
    PEAK_RSS_MIB_KEY,
    PRUNED_STEP_KEY,
    TRIAL_PID_KEY,
)
from hparam_joblib.config._schema import MlflowSpec

logger = logging.getLogger("hparam_joblib")

RETRY_SECONDS = 5.0
FLUSH_SECONDS = 30.0
#: The launcher's bound on reaching the server at the start (it then runs untracked).
START_SECONDS = 30.0
#: MLflow's own HTTP timeout and retries (its defaults retry for minutes); ours win over none.
_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run" line per trial above the bar
}
_TAG_LIMIT = 5000


@dataclass(frozen=True)
class TrackingTarget:
    """Where a worker writes its trials' runs (plain data)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study_name: str


def _client(uri: str) -> Any:
    for key, value in _CLIENT_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_parent(spec: MlflowSpec, study_name: str, storage: Any, study_id: int,
                 n_trials: int) -> TrackingTarget | None:
    """Find or create the experiment and the search's parent run (launcher side, bounded).

    Returns None (after one warning) when mlflow is missing or the server cannot be reached.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        logger.warning('tracking.mlflow: mlflow is not installed (pip install "hparam_joblib[mlflow]"); '
                       "this search is not tracked")
        return None
    experiment = spec.experiment_name or study_name
    key = f"{spec.tracking_uri} {experiment}"
    known = dict(storage.get_study_system_attrs(study_id).get(MLFLOW_PARENT_KEY) or {})
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            client = _client(spec.tracking_uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            parent = known.get(key)
            if parent:
                client.update_run(parent, status="RUNNING")
            else:
                parent = client.create_run(
                    experiment_id, run_name=study_name,
                    tags={"optuna.study_name": study_name, "hparam_joblib.n_trials": str(n_trials)},
                ).info.run_id
            box["target"] = TrackingTarget(spec.tracking_uri, experiment_id, parent, study_name)
        except Exception as err:  # noqa: BLE001 - tracking never stops a search
            box["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"

    thread = threading.Thread(target=work, name="hparam_joblib-mlflow-start", daemon=True)
    thread.start()
    thread.join(START_SECONDS)
    target: TrackingTarget | None = box.get("target")
    if target is None:
        why = box.get("error") or f"no answer in {START_SECONDS:.0f} s"
        logger.warning("tracking.mlflow: cannot reach %s (%s); this search is not tracked in MLflow",
                       spec.tracking_uri, why)
        return None
    if known.get(key) != target.parent_run_id:
        known[key] = target.parent_run_id
        storage.set_study_system_attr(study_id, MLFLOW_PARENT_KEY, known)
    logger.info("MLflow: experiment %s, parent run %s", experiment, target.parent_run_id)
    return target


def finish_parent(target: TrackingTarget, counts: dict[str, int], best: float | None,
                  interrupted: bool) -> None:
    """Record the search's counts and best value on the parent run and end it (bounded, best effort)."""

    def work() -> None:
        try:
            from mlflow.entities import Metric

            client = _client(target.tracking_uri)
            now = int(time.time() * 1000)
            metrics = [Metric(f"trials_{state.lower()}", float(n), now, 0) for state, n in counts.items()]
            if best is not None:
                metrics.append(Metric("best_value", float(best), now, 0))
            client.log_batch(target.parent_run_id, metrics=metrics)
            client.set_terminated(target.parent_run_id, "KILLED" if interrupted else "FINISHED")
        except Exception as err:  # noqa: BLE001
            logger.warning("tracking.mlflow: could not end the parent run (%s: %s)", type(err).__name__, err)

    thread = threading.Thread(target=work, name="hparam_joblib-mlflow-end", daemon=True)
    thread.start()
    thread.join(START_SECONDS)


@dataclass
class _Record:
    """One finished trial to write, and how far its writing got (so a retry never duplicates)."""

    trial: Any
    run_id: str | None = None
    #: A create_run was sent: it may have reached the server even if its answer did not.
    tried: bool = False
    done: set[str] = field(default_factory=set)


def _created_before(client: Any, target: TrackingTarget, number: int) -> str | None:
    """The run of trial ``number`` that an earlier create_run made, if its answer was lost."""
    found = client.search_runs(
        [target.experiment_id], max_results=1,
        filter_string=(f"tags.`mlflow.parentRunId` = '{target.parent_run_id}' "
                       f"and tags.`optuna.trial_number` = '{number}'"),
    )
    return str(found[0].info.run_id) if found else None


def _outcome(trial: Any) -> tuple[str, str, str]:
    """(state tag, MLflow status, reason) of a finished Optuna trial."""
    state = trial.state.name
    reason = str(trial.user_attrs.get(FAILURE_REASON_KEY) or "")
    if state == "COMPLETE":
        return state, "FINISHED", reason
    if state == "PRUNED" and PRUNED_STEP_KEY in trial.user_attrs:
        return state, "KILLED", reason
    return state, "FAILED", reason  # hparam_joblib records a failed run as PRUNED with its reason


class TrialLogger:
    """The worker's side: :meth:`submit` a finished trial; a thread writes its nested run."""

    def __init__(self, target: TrackingTarget) -> None:
        self.target = target
        self.pending: queue.Queue[_Record | None] = queue.Queue()
        self.written = 0
        self.warned = False
        self.abandon = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hparam_joblib-mlflow", daemon=True)
        self.thread.start()

    def submit(self, trial: Any) -> None:
        """Queue a finished trial (``FrozenTrial``); never blocks, never raises."""
        self.pending.put(_Record(trial))

    def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Write what is queued, then return.

        A slow server is waited for as long as it makes progress; ``timeout`` bounds the wait
        without one run written (the server is down), after which the rest is dropped.
        """
        self.pending.put(None)
        start = last_progress = time.monotonic()
        written = self.written
        said = False
        while True:
            self.thread.join(0.5)
            if not self.thread.is_alive():
                return
            now = time.monotonic()
            if self.written != written:
                written, last_progress = self.written, now
            if now - last_progress >= timeout:
                break
            if not said and now - start >= 10.0:
                said = True
                logger.info("tracking.mlflow: waiting for %d trial run(s) of this worker to be written to %s",
                            self.pending.qsize(), self.target.tracking_uri)
        self.abandon.set()  # a reused loky worker must not retry forever
        # Queued: the records not started and the end sentinel; the one being retried makes up for it.
        left = self.pending.qsize()
        logger.warning(
            "tracking.mlflow: %d trial run(s) of this worker not written to %s (no run written for "
            "%.0f s at the end); the Optuna study has every trial",
            left, self.target.tracking_uri, timeout,
        )

    def _run(self) -> None:
        client = None
        while True:
            record = self.pending.get()
            if record is None:
                return
            while not self.abandon.is_set():
                try:
                    if client is None:
                        client = _client(self.target.tracking_uri)
                    self._write(client, record)
                    self.written += 1
                    break
                except Exception as err:  # noqa: BLE001 - the server is down or slow: retry later
                    client = None  # a fresh client (and HTTP session) for the retry
                    if not self.warned:
                        self.warned = True
                        logger.warning(
                            "tracking.mlflow: cannot write trial %d's run to %s (%s: %s); runs are kept "
                            "and retried every %.0f s (the trials go on)", record.trial.number,
                            self.target.tracking_uri, type(err).__name__,
                            str(err).splitlines()[0][:200] if str(err) else "", RETRY_SECONDS,
                        )
                    self.abandon.wait(RETRY_SECONDS)
            if self.abandon.is_set():
                return

    def _write(self, client: Any, record: _Record) -> None:
        from mlflow.entities import Metric, Param, RunTag

        trial, target = record.trial, self.target
        state, status, reason = _outcome(trial)
        start = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else None
        end = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        if record.run_id is None and record.tried:
            record.run_id = _created_before(client, target, trial.number)
        if record.run_id is None:
            record.tried = True
            record.run_id = client.create_run(
                target.experiment_id, start_time=start, run_name=f"trial_{trial.number:05d}",
                tags={"mlflow.parentRunId": target.parent_run_id,
                      "optuna.study_name": target.study_name, "optuna.trial_number": str(trial.number)},
            ).info.run_id
        run_id = record.run_id
        if "batch" not in record.done:
            tags = {
                # (the study and trial-number tags were set when the run was created)
                "state": state, "hparam_joblib.worker_pid": str(os.getpid()),
            }
            if reason:
                tags["failure_reason" if status == "FAILED" else "pruning_reason"] = reason[:_TAG_LIMIT]
            for attr in (PRUNED_STEP_KEY, FAILURE_TYPE_KEY, PEAK_RSS_MIB_KEY, PEAK_GPU_MIB_KEY, TRIAL_PID_KEY, GPU_KEY):
                if attr in trial.user_attrs:
                    tags[attr] = str(trial.user_attrs[attr])
            stamp = end or int(time.time() * 1000)
            metrics = [Metric("intermediate_value", float(v), stamp, int(step))
                       for step, v in sorted(trial.intermediate_values.items())]
            values = trial.values or []
            if len(values) == 1:
                metrics.append(Metric("value", float(values[0]), stamp, 0))
            else:
                metrics += [Metric(f"value_{i}", float(v), stamp, 0) for i, v in enumerate(values)]
            params = [Param(k, str(v)[:6000]) for k, v in trial.params.items()]
            tag_list = [RunTag(k, v) for k, v in tags.items()]
            for i in range(0, max(len(metrics), len(params), 1), 100):
                client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100],
                                 tags=tag_list if i == 0 else [])
            record.done.add("batch")
        if "config" not in record.done:
            client.log_text(run_id, json.dumps(trial.user_attrs.get(CONFIG_KEY, {}), indent=2, default=str),
                            "config.json")
            record.done.add("config")
        log_file = trial.user_attrs.get(LOG_FILE_KEY)
        if "log" not in record.done:
            if log_file and os.path.exists(log_file):
                client.log_artifact(run_id, log_file)
            record.done.add("log")
        client.set_terminated(run_id, status, end_time=end)

"""The stop-fast rule in the launcher (``max_trial_errors``, see ``runtime/_failures.py``):
stop with one line when the run's first trials all failed by an error, the full traceback
written beside the trial logs."""

from __future__ import annotations

import os
from pathlib import Path

from optuna.trial import FrozenTrial

from hparam_joblib._keys import FAILURE_REASON_KEY, FAILURE_TRACEBACK_KEY
from hparam_joblib.runtime._failures import ErrorStop, broken_code_error
from hparam_joblib.runtime.launcher._launch import Launch
from hparam_joblib.storage import StudyStore


def check_errors(errors: ErrorStop, storage: StudyStore, study_id: int, launch: Launch) -> None:
    """Raise the stop-fast error when the run's first ``max_trial_errors`` trials all failed.

    Raises:
        TrainingCodeError: they did (the one line names the error, the user's file and line,
            and where the full traceback is).
    """
    if not errors.armed:
        return
    first = errors.check(storage, study_id, storage.count_states(study_id))
    if first:
        cfg = launch.cfg
        raise broken_code_error(
            first, cfg.max_trial_errors, cfg.study_name, launch.location.display,
            _write_traceback(launch.log_dir, cfg.study_name, first[-1]),
            main_file=launch.function.path or None,
        )


def _write_traceback(log_dir: Path, study_name: str, trial: FrozenTrial) -> Path | None:
    """Write a failed trial's full traceback beside its log (``trial_00004.traceback.txt`` in the
    study's log directory); returns the file, or None when it cannot be written (the trial's
    ``failure_traceback`` attr holds it)."""
    text = trial.user_attrs.get(FAILURE_TRACEBACK_KEY)
    if not text:
        return None
    path = log_dir / f"trial_{trial.number:05d}.traceback.txt"
    reason = str(trial.user_attrs.get(FAILURE_REASON_KEY) or "").splitlines()[0:1]
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# trial {trial.number} of study {study_name}: {''.join(reason)}\n{text}")
    except OSError:
        return None
    return _relative(path)


def _relative(path: Path) -> Path:
    """``path`` relative to the working directory when it is under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else Path(rel)

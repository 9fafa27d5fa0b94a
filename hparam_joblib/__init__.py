"""hparam_joblib: a YAML-defined, process-parallel, crash-proof Optuna search on SQLite.

Decorate ``train(config: dict) -> float`` with :func:`hparam_search` and run the script; inside
the function, :func:`report` feeds the pruner and :func:`current_trial_number` names the trial.
"""

from __future__ import annotations

from hparam_joblib._decorator import hparam_search
from hparam_joblib._errors import (
    ConfigError,
    HparamError,
    OverrideError,
    StorageBusyError,
    StorageError,
    UsageError,
)
from hparam_joblib._report import OutsideSearchError, current_trial_number, report
from hparam_joblib._result import BestTrial, SearchResult

__all__ = [
    "BestTrial",
    "ConfigError",
    "HparamError",
    "OutsideSearchError",
    "OverrideError",
    "SearchResult",
    "StorageBusyError",
    "StorageError",
    "UsageError",
    "current_trial_number",
    "hparam_search",
    "report",
]
__version__ = "0.1.0"

"""hparam_joblib: a YAML-defined, process-parallel, crash-proof Optuna search on SQLite.

Decorate ``train(config: dict) -> float`` with :func:`hparam_search` and run the script; inside
the function, :func:`report` feeds the pruner and :func:`current_trial_number` names the trial.

The names are imported on first use (PEP 562), so that a trial process, which only needs
``report()``, starts without importing Optuna and SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hparam_joblib._decorator import hparam_search
    from hparam_joblib._errors import (
        BackendError,
        ConfigError,
        HparamError,
        MissingExtraError,
        OutsideSearchError,
        OverrideError,
        StorageBusyError,
        StorageError,
        TrainingCodeError,
        UpgradeError,
        UsageError,
        WorkerCrashError,
    )
    from hparam_joblib._report import current_trial_number, report
    from hparam_joblib._result import BestTrial, SearchResult

_WHERE = {
    "hparam_search": "_decorator",
    "BackendError": "_errors",
    "ConfigError": "_errors",
    "HparamError": "_errors",
    "MissingExtraError": "_errors",
    "OutsideSearchError": "_errors",
    "OverrideError": "_errors",
    "StorageBusyError": "_errors",
    "StorageError": "_errors",
    "TrainingCodeError": "_errors",
    "UpgradeError": "_errors",
    "UsageError": "_errors",
    "WorkerCrashError": "_errors",
    "current_trial_number": "_report",
    "report": "_report",
    "BestTrial": "_result",
    "SearchResult": "_result",
}

__all__ = [
    "BackendError",
    "BestTrial",
    "ConfigError",
    "HparamError",
    "MissingExtraError",
    "OutsideSearchError",
    "OverrideError",
    "SearchResult",
    "StorageBusyError",
    "StorageError",
    "TrainingCodeError",
    "UpgradeError",
    "UsageError",
    "WorkerCrashError",
    "current_trial_number",
    "hparam_search",
    "report",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"hparam_joblib.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hparam_joblib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

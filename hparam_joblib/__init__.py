"""hparam_joblib: a YAML-defined, process-parallel, crash-proof Optuna search on SQLite.

Decorate ``train(config: dict) -> float`` with :func:`hparam_search` and run the script.
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
from hparam_joblib._result import SearchResult

__all__ = [
    "ConfigError",
    "HparamError",
    "OverrideError",
    "SearchResult",
    "StorageBusyError",
    "StorageError",
    "UsageError",
    "hparam_search",
]
__version__ = "0.1.0"

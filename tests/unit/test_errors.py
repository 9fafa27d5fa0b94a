"""The error classes survive pickling (workers send them to the launcher through loky)."""

from __future__ import annotations

import pickle

import pytest

from hparam_joblib import ConfigError, OverrideError, StorageBusyError, StorageError, UsageError


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("config.yaml", "sweep_parameters.lr.low", "must be > 0 when log is true"),
        OverrideError("n_trials", "expected key=value"),
        StorageError("/tmp/x.db", "is not a SQLite database"),
        StorageBusyError("/tmp/x.db", 7, "processes with it open: 123 (sqlite3)"),
        UsageError("unrecognized arguments: --frobnicate"),
    ],
)
def test_errors_round_trip_through_pickle(error: Exception) -> None:
    """Type, message and attributes are the same after a pickle round trip."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)

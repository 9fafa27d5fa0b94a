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


def test_every_error_class_is_in_errors_module_tree_and_all() -> None:
    """Every HparamError subclass the package defines lives in ``_errors``, is drawn in its tree
    and is importable from ``hparam_joblib`` (so a user can catch it)."""
    import ast
    from pathlib import Path

    import hparam_joblib
    from hparam_joblib import _errors

    package = Path(hparam_joblib.__file__).resolve().parent
    outside = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id.endswith("Error") for b in node.bases
            ):
                outside.append(f"{path.relative_to(package)}: {node.name}")
    assert outside == []
    defined = {
        name for name, value in vars(_errors).items()
        if isinstance(value, type) and issubclass(value, _errors.HparamError)
    }
    tree = _errors.__doc__ or ""
    assert {name for name in defined if name not in tree} == set()
    assert defined <= set(hparam_joblib.__all__)
    assert all(getattr(hparam_joblib, name) is getattr(_errors, name) for name in defined)

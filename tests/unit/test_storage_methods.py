"""Every Optuna storage method that reads or writes the database is SearchStorage's own, retried:
none is left to Optuna by a rename in Optuna or a method forgotten here."""

from __future__ import annotations

import inspect

from optuna.storages import RDBStorage

from hparam_joblib.storage import SearchStorage

#: The methods a ``setattr`` loop once wrapped in a retry (now written out in SearchStorage).
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_all_trials", "get_n_trials", "get_best_trial", "record_heartbeat",
    # Optuna's _CachedStorage calls this private method of its backend directly.
    "_get_best_trial_id",
)

#: Public methods of RDBStorage left to Optuna: no query, or the schema version API (not retried).
LEFT_TO_OPTUNA = {
    "check_trial_is_updatable", "get_failed_trial_callback", "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback", "remove_session",
    "get_all_versions", "get_current_version", "get_head_version", "upgrade",
}


def _owner(name: str) -> type:
    """The class of SearchStorage's MRO that defines ``name``."""
    return next(cls for cls in SearchStorage.__mro__ if name in vars(cls))


def test_every_retried_method_is_defined_by_search_storage_itself() -> None:
    """Each formerly wrapped method Optuna still has is in SearchStorage's class body."""
    missing = [name for name in RETRIED if hasattr(RDBStorage, name) and name not in vars(SearchStorage)]
    assert missing == []


def test_no_public_optuna_method_is_inherited_unless_listed() -> None:
    """A public RDBStorage method SearchStorage does not take over is one listed as needing no
    retry: a method Optuna adds or renames fails here instead of running without retries."""
    inherited = {
        name for name, _ in inspect.getmembers(RDBStorage, inspect.isfunction)
        if not name.startswith("_") and not _owner(name).__module__.startswith("hparam_joblib.")
    }
    assert inherited == LEFT_TO_OPTUNA


def test_search_storage_is_an_rdb_storage() -> None:
    """Optuna's cache and ``optuna.load_study`` need an RDBStorage."""
    assert issubclass(SearchStorage, RDBStorage)

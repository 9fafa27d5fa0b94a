"""The journal records we write by hand are Optuna's: plain Optuna reads back the same study.

``storage: journal`` appends some records itself (the trial's buffered user attrs, the final
state together with its reason), built from Optuna's record format. A format that drifts from
Optuna's would damage users' files for good, so every path that appends is driven here and the
file is then read by a fresh, plain ``JournalStorage``: each trial must equal what our storage
holds and what the test wrote, also after a torn write, and in a time zone that is not UTC (the
final time is written in UTC and read back as local time, as Optuna's own records are).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._keys import FAILURE_KIND_KEY, FAILURE_REASON_KEY, OWNER_KEY
from hparam_joblib.storage import JournalSearchStorage, StorageLocation
from hparam_joblib.storage._base import BudgetExhausted

FIELDS = ("number", "state", "values", "params", "distributions", "user_attrs", "system_attrs",
          "intermediate_values", "datetime_start", "datetime_complete")


@pytest.fixture
def far_time_zone() -> Iterator[None]:
    """This process runs in UTC+9 for the test (start and end times must not drift apart)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def _plain(path: Path) -> list[FrozenTrial]:
    """The study's trials as a fresh, plain Optuna reads the file."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name="exp", storage=storage).get_trials(deepcopy=False)


def _fields(trial: FrozenTrial) -> dict[str, Any]:
    return {name: getattr(trial, name) for name in FIELDS}


def _run_trial(study: optuna.Study, storage: JournalSearchStorage, outcome: str) -> int:
    """One trial as a worker runs it: params, the config flushed before it runs, intermediate
    values, attrs buffered until the end, then the end in one append."""
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    trial.set_user_attr("config", {"x": x, "kind": kind})
    storage.flush_trial(trial._trial_id)
    trial.report(x / 2, 1)
    trial.report(x / 3, 2)
    trial.set_user_attr("peak_rss_mib", 12.5)
    if outcome == "complete":
        study.tell(trial, x)
    elif outcome == "pruned":
        trial.set_user_attr(FAILURE_REASON_KEY, "ValueError: boom")
        trial.set_user_attr(FAILURE_KIND_KEY, "error")
        study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(FAILURE_REASON_KEY, "the worker process running it died")
        study.tell(trial, state=TrialState.FAIL)
    return trial.number


def _check_same(path: Path, storage: JournalSearchStorage) -> list[FrozenTrial]:
    """Plain Optuna reads what our storage holds, field by field, with sane times."""
    ours = storage.get_all_trials(0, deepcopy=False)
    plain = _plain(path)
    assert [_fields(t) for t in plain] == [_fields(t) for t in ours]
    for trial in plain:
        if trial.datetime_complete is not None:
            assert trial.datetime_start is not None
            assert trial.duration is not None and trial.duration.total_seconds() >= 0, trial.number
    return plain


def test_plain_optuna_reads_every_record_we_append(tmp_path: Path, far_time_zone: None) -> None:
    """COMPLETE, PRUNED and FAIL trials with buffered attrs, an enqueued trial, the run history,
    the budget refusal and a torn write: plain Optuna's reader gives our study every time."""
    path = tmp_path / "exp.journal"
    storage = JournalSearchStorage(StorageLocation("journal", path=str(path)), budget=6, run_id="run-1")
    study = optuna.create_study(study_name="exp", storage=storage, sampler=optuna.samplers.RandomSampler(seed=3))
    for outcome in ("complete", "pruned", "fail"):
        _run_trial(study, storage, outcome)
    study.enqueue_trial({"x": 0.25, "kind": "b"})
    _run_trial(study, storage, "complete")
    storage.update_study_user_attr(study._study_id, "runs", lambda runs: [*(runs or []), {"run": "run-1"}])

    plain = _check_same(path, storage)
    assert [t.state for t in plain] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert plain[3].params == {"x": 0.25, "kind": "b"}
    assert all(t.user_attrs["config"] == t.params and t.user_attrs["peak_rss_mib"] == 12.5 for t in plain)
    assert all(t.intermediate_values == {1: t.params["x"] / 2, 2: t.params["x"] / 3} for t in plain)
    assert plain[1].user_attrs[FAILURE_REASON_KEY] == "ValueError: boom"
    assert plain[1].user_attrs[FAILURE_KIND_KEY] == "error"
    assert plain[2].user_attrs[FAILURE_REASON_KEY] == "the worker process running it died"
    assert [t.system_attrs[OWNER_KEY]["run"] for t in plain if OWNER_KEY in t.system_attrs] == ["run-1"] * 3
    loaded = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(str(path))))
    assert loaded.user_attrs["runs"] == [{"run": "run-1"}]

    # A writer killed mid-record: the next append cuts the torn tail; plain Optuna still agrees.
    with open(path, "ab") as handle:
        handle.write(b'{"op_code": 6, "worker_id": "torn", "trial_id": 0, "sta')
    _run_trial(study, storage, "complete")
    plain = _check_same(path, storage)
    assert len(plain) == 5 and plain[4].state == TrialState.COMPLETE
    assert path.read_bytes().endswith(b"\n")

    # The budget (6 slots; the FAIL trial freed its slot): a trial past it is refused, unwritten.
    _run_trial(study, storage, "complete")
    _run_trial(study, storage, "complete")
    size = path.stat().st_size
    with pytest.raises(BudgetExhausted):
        study.ask()
    assert path.stat().st_size == size
    plain = _check_same(path, storage)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in plain) == 6
    storage.close()

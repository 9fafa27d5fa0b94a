"""The hot path in SQLAlchemy Core: prebuilt statements on the rows Optuna's ORM reads and
writes for a trial (several times less CPU per trial), whole trials read with them, and the
buffered writes' shape. The writes themselves are in ``_core_writes``.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from optuna import distributions as optuna_distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import bindparam, func, literal_column, or_, select

from hparam_joblib.storage._base import BUDGET_STATES

logger = logging.getLogger("hparam_joblib")


@dataclass
class _PendingWrites:
    """Params and system attrs of a trial this process runs, not yet written (see flush_trial)."""

    #: (name, internal value, distribution, distribution to check against or None: look it up)
    params: list[tuple[str, float, Any, Any]]
    system_attrs: dict[str, Any]


_T = models.TrialModel.__table__


_P = models.TrialParamModel.__table__


_V = models.TrialValueModel.__table__


_UA = models.TrialUserAttributeModel.__table__


_SA = models.TrialSystemAttributeModel.__table__


_IV = models.TrialIntermediateValueModel.__table__


_TRIAL_COLS = (_T.c.trial_id, _T.c.number, _T.c.state, _T.c.datetime_start, _T.c.datetime_complete)


def _trial_filter(states: bool, by_id: bool) -> Any:
    """The WHERE clause of a trials read (bound parameters: sid, ids, gt, states, tid)."""
    if by_id:
        return _T.c.trial_id == bindparam("tid")
    rows = or_(_T.c.trial_id.in_(bindparam("ids", expanding=True)), _T.c.trial_id > bindparam("gt"))
    if states:  # the (study_id, state) index finds them
        return (_T.c.study_id == bindparam("sid")) & rows & _T.c.state.in_(bindparam("states", expanding=True))
    # ``study_id + 0``: not through the study_id index. Through it, SQLite walks every trial of
    # the study to test the OR (0.34 ms per statement at 5,000 trials; six statements per read,
    # several reads per trial); without it the OR is two primary-key searches (the ids, and the
    # ids past ``gt``): 0.003 ms, flat in the study size. (The rows' order is set the same way.)
    return ((_T.c.study_id + _NO_INDEX) == bindparam("sid")) & rows


#: Added to a column, keeps the planner from using that column's index (a literal, not a bind:
#: SQLite plans ``col + ?`` as a full scan).
_NO_INDEX: Any = literal_column("0")


def _child_selects(where: Any) -> dict[str, Any]:
    sub = select(_T.c.trial_id).where(where).scalar_subquery()
    return {
        "params": select(_P.c.trial_id, _P.c.param_name, _P.c.param_value, _P.c.distribution_json)
        .where(_P.c.trial_id.in_(sub)).order_by(_P.c.param_id),
        "values": select(_V.c.trial_id, _V.c.objective, _V.c.value, _V.c.value_type).where(_V.c.trial_id.in_(sub)),
        "user": select(_UA.c.trial_id, _UA.c.key, _UA.c.value_json).where(_UA.c.trial_id.in_(sub)),
        "system": select(_SA.c.trial_id, _SA.c.key, _SA.c.value_json).where(_SA.c.trial_id.in_(sub)),
        "steps": select(_IV.c.trial_id, _IV.c.step, _IV.c.intermediate_value, _IV.c.intermediate_value_type)
        .where(_IV.c.trial_id.in_(sub)),
    }


def _upsert_attrs(conn: Any, table: Any, trial_id: int, items: dict[str, Any]) -> None:
    """Set attrs of a trial, replacing same-key rows ((trial_id, key) is unique), on any dialect."""
    keys = list(items)
    conn.execute(table.delete().where(table.c.trial_id == trial_id, table.c.key.in_(keys)))
    rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(items[k])} for k in keys]
    # Several rows: one multi-row INSERT (one statement on the server, where executemany sends one each).
    conn.execute(table.insert().values(rows) if len(rows) > 1 else table.insert(), rows if len(rows) == 1 else None)


_PAST_TRIALS = select(func.count(_T.c.trial_id)).where(
    _T.c.study_id == bindparam("sid"), _T.c.trial_id < bindparam("tid")
)


_TRIAL_STATE = select(_T.c.state).where(_T.c.trial_id == bindparam("tid"))


_TRIAL_STATE_FOR_UPDATE = _TRIAL_STATE.with_for_update()


_STUDY_EXISTS = select(models.StudyModel.__table__.c.study_id).where(
    models.StudyModel.__table__.c.study_id == bindparam("sid")
)


_STUDY_FOR_UPDATE = _STUDY_EXISTS.with_for_update()


_BUDGET_TAKEN = select(func.count(_T.c.trial_id)).where(
    _T.c.study_id == bindparam("sid"), _T.c.state.in_(list(BUDGET_STATES))
)


_HAS_WAITING = (
    select(_T.c.trial_id).where(_T.c.study_id == bindparam("sid"), _T.c.state == TrialState.WAITING).limit(1)
)


#: Prebuilt Core statements (SQLAlchemy caches their compiled form): one per read shape.
_READS: dict[tuple[bool, bool], tuple[Any, dict[str, Any]]] = {}


for _states in (False, True):
    for _by_id in (False, True):
        _where = _trial_filter(_states, _by_id)
        # Ordered by ``trial_id + 0``: ordered by the column, SQLite scans the table in its order.
        _order = _T.c.trial_id if (_states or _by_id) else _T.c.trial_id + _NO_INDEX
        _READS[(_states, _by_id)] = (select(*_TRIAL_COLS).where(_where).order_by(_order), _child_selects(_where))


@functools.lru_cache(maxsize=256)
def _distribution(text: str) -> Any:
    return optuna_distributions.json_to_distribution(text)


def _local(stamp: Any) -> Any:
    """Naive UTC as stored -> naive local time, as Optuna's TrialModel properties do."""
    if stamp is None:
        return None
    return stamp.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def _read_trials(conn: Any, by_id: bool, states: Any, binds: dict[str, Any]) -> list[FrozenTrial]:
    """Trials as Optuna's ``_build_frozen_trial_from_trial_model`` builds them, read with six
    Core statements (no ORM objects, no lazy loads) in the caller's transaction."""
    trial_stmt, children = _READS[(states is not None, by_id)]
    if states is not None:
        binds = {**binds, "states": list(states)}
    rows = conn.execute(trial_stmt, binds).all()
    if not rows:
        return []
    params: dict[int, list[tuple[str, float, str]]] = {}
    values: dict[int, dict[int, float]] = {}
    user: dict[int, dict[str, Any]] = {}
    system: dict[int, dict[str, Any]] = {}
    steps: dict[int, dict[int, float]] = {}
    for tid, name, value, dist in conn.execute(children["params"], binds):
        params.setdefault(tid, []).append((name, value, dist))
    for tid, objective, value, kind in conn.execute(children["values"], binds):
        values.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
    for tid, key, text in conn.execute(children["user"], binds):
        user.setdefault(tid, {})[key] = json.loads(text)
    for tid, key, text in conn.execute(children["system"], binds):
        system.setdefault(tid, {})[key] = json.loads(text)
    for tid, step, value, kind in conn.execute(children["steps"], binds):
        steps.setdefault(tid, {})[step] = (
            models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
        )
    trials = []
    for tid, number, state, start, complete in rows:
        dists = {name: _distribution(dist) for name, _, dist in params.get(tid, ())}
        objective_values = values.get(tid)
        trials.append(FrozenTrial(
            number=number, state=state, value=None,
            values=[objective_values[i] for i in sorted(objective_values)] if objective_values else None,
            datetime_start=_local(start), datetime_complete=_local(complete),
            params={name: dists[name].to_external_repr(value) for name, value, _ in params.get(tid, ())},
            distributions=dists, user_attrs=user.get(tid, {}), system_attrs=system.get(tid, {}),
            intermediate_values=steps.get(tid, {}), trial_id=tid,
        ))
    return trials



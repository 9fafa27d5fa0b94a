"""Optuna's writes of a trial's rows, rewritten in SQLAlchemy Core (the same checks, the same
rows; Optuna's ORM path costs about 3x the CPU): a new trial, an attribute, a state with its
values, and a trial's buffered params and attrs.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, cast

from optuna import distributions as optuna_distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select

from hparam_joblib.storage._fast_path import (
    _P,
    _PAST_TRIALS,
    _SA,
    _T,
    _TRIAL_STATE,
    _TRIAL_STATE_FOR_UPDATE,
    _UA,
    _V,
    _distribution,
    _PendingWrites,
    _upsert_attrs,
)
from hparam_joblib.storage._retrying import Retrying


class CoreWrites(Retrying):
    """The ``_without_commit`` writes of RDBStorage in Core; each runs in its caller's session."""

    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: Any
    ) -> models.TrialModel:
        if template_trial is not None:  # enqueued / added trials: Optuna's own code
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        conn = session.connection()
        trial = models.TrialModel(study_id=study_id, state=TrialState.RUNNING)
        trial.datetime_start = datetime.datetime.now()
        result = conn.execute(_T.insert().values(
            study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=trial._datetime_start_utc
        ))
        trial.trial_id = int(result.inserted_primary_key[0])
        # Optuna numbers a trial by the trials of its study with a smaller id (same rule).
        trial.number = int(conn.execute(_PAST_TRIALS, {"sid": study_id, "tid": trial.trial_id}).scalar())
        conn.execute(_T.update().where(_T.c.trial_id == trial.trial_id).values(number=trial.number))
        return trial

    def _set_trial_attr_without_commit(
        self, session: Any, model_cls: Any, trial_id: int, key: str, value: Any
    ) -> None:
        conn = session.connection()
        self._updatable_state(conn, trial_id)
        _upsert_attrs(conn, model_cls.__table__, trial_id, {key: value})

    def _updatable_state(self, conn: Any, trial_id: int, for_update: bool = False) -> TrialState:
        """The trial's state, read as Optuna's writes do before writing: KeyError when there is
        no such trial, ``UpdateFinishedTrialError`` when it is finished."""
        state = conn.execute(_TRIAL_STATE_FOR_UPDATE if for_update else _TRIAL_STATE, {"tid": trial_id}).scalar()
        if state is None:
            raise KeyError(models.NOT_FOUND_MSG)
        self.check_trial_is_updatable(trial_id, state)
        return cast(TrialState, state)

    def _set_state_without_commit(
        self, session: Any, trial_id: int, state: TrialState, values: Sequence[float] | None,
        current: TrialState | None = None,
    ) -> bool:
        """Optuna's ``RDBStorage.set_trial_state_values`` (same checks, same rows) in Core.
        ``current``: the state the caller already read ``FOR UPDATE`` in this transaction."""
        conn = session.connection()
        if current is None:
            current = self._updatable_state(conn, trial_id, for_update=True)
        if values is not None and len(values) > 0:
            conn.execute(_V.delete().where(_V.c.trial_id == trial_id, _V.c.objective.in_(range(len(values)))))
            rows = []
            for objective, v in enumerate(values):
                stored, kind = models.TrialValueModel.value_to_stored_repr(v)
                rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
            conn.execute(_V.insert(), rows)
        if state == TrialState.RUNNING and current != TrialState.WAITING:
            return False
        now = datetime.datetime.now().astimezone(datetime.timezone.utc).replace(tzinfo=None)
        update: dict[str, Any] = {"state": state}
        if state == TrialState.RUNNING:
            update["datetime_start"] = now
        if state.is_finished():
            update["datetime_complete"] = now
        conn.execute(_T.update().where(_T.c.trial_id == trial_id).values(**update))
        return True

    def _write_pending_without_commit(self, session: Any, trial_id: int, pending: _PendingWrites | None,
                                      attrs: dict[str, Any] | None, checked: bool = False) -> None:
        """Buffered params and attrs of ``trial_id`` into ``session``: the rows Optuna would write
        (same checks), with one statement per table instead of ORM objects per row. ``checked``:
        the caller already read the trial's state (updatable) in this transaction."""
        conn = session.connection()
        if not checked:
            self._updatable_state(conn, trial_id)
        if pending is not None and pending.params:
            rows = []
            for name, value, dist, previous in pending.params:
                if previous is None:  # first use of the name here: Optuna's check, in this transaction
                    found = session.query(models.TrialParamModel.distribution_json).join(models.TrialModel).filter(
                        models.TrialModel.study_id == select(_T.c.study_id).where(_T.c.trial_id == trial_id)
                        .scalar_subquery(),
                        models.TrialParamModel.param_name == name,
                    ).first()
                    if found is not None:
                        optuna_distributions.check_distribution_compatibility(_distribution(found[0]), dist)
                rows.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                             "distribution_json": optuna_distributions.distribution_to_json(dist)})
            # One multi-row INSERT (executemany sends one statement per row to the server).
            conn.execute(_P.insert().values(rows) if len(rows) > 1 else _P.insert(), rows if len(rows) == 1 else None)
        for table, items in ((_SA, pending.system_attrs if pending else None), (_UA, attrs)):
            if items:
                _upsert_attrs(conn, table, trial_id, items)

"""What the launcher, the progress bar and the failure report ask of an RDB study beyond
Optuna's API: state counts, a waiting trial, running owners, failure attrs, a study attr updated
in one transaction, the budget index.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState
from sqlalchemy import bindparam, func, select

from hparam_joblib._keys import OWNER_KEY
from hparam_joblib.storage._fast_path import _HAS_WAITING, _STUDY_FOR_UPDATE, _T, _UA
from hparam_joblib.storage._retrying import Retrying
from hparam_joblib.storage._schema import create_budget_index


def read_running_owners(scoped_session: Any, study_id: int) -> list[tuple[int, int, dict[str, Any]]]:
    """``(trial_id, number, owner)`` of every RUNNING trial of the study (one query, no retry)."""
    with _create_scoped_session(scoped_session) as session:
        rows = (
            session.query(
                models.TrialModel.trial_id,
                models.TrialModel.number,
                models.TrialSystemAttributeModel.value_json,
            )
            .outerjoin(
                models.TrialSystemAttributeModel,
                (models.TrialSystemAttributeModel.trial_id == models.TrialModel.trial_id)
                & (models.TrialSystemAttributeModel.key == OWNER_KEY),
            )
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .all()
        )
    return [(int(t), int(n), json.loads(v) if v else {}) for t, n, v in rows]


_COUNT_STATES = select(_T.c.state, func.count(_T.c.trial_id)).where(_T.c.study_id == bindparam("sid")).group_by(_T.c.state)


class LauncherQueries(Retrying):
    """The queries of :class:`StudyStore` that Optuna has no method for, each retried."""

    def add_budget_index(self) -> None:
        """Index ``trials(study_id, state)``: the budget count runs inside the write lock on
        every trial creation. An extra index is invisible to Optuna and optuna-dashboard."""
        self._retry(lambda: create_budget_index(self.engine), write=True, setup=True)

    def update_study_user_attr(self, study_id: int, key: str, update: Callable[[Any], Any]) -> None:
        """Set a study user attr to ``update(its value or None)`` in one write transaction: no
        other writer comes between the read and the write (the run history of launches that
        start at once). SQLite: the writers' lock and ``BEGIN IMMEDIATE``; a server: the study's
        row locked ``FOR UPDATE`` first, as trial creation does."""
        table = models.StudyUserAttributeModel.__table__

        def once() -> None:
            with self.engine.begin() as conn:
                if conn.execute(_STUDY_FOR_UPDATE, {"sid": study_id}).first() is None:
                    raise KeyError(models.NOT_FOUND_MSG)
                where = (table.c.study_id == study_id, table.c.key == key)
                row = conn.execute(select(table.c.value_json).where(*where)).first()
                value = update(None if row is None else json.loads(row[0]))
                conn.execute(table.delete().where(*where))
                conn.execute(table.insert(), [{"study_id": study_id, "key": key, "value_json": json.dumps(value)}])

        self._retry(once, write=True)

    def count_states(self, study_id: int) -> dict[str, int]:
        """``{state name: count}`` for the study, in one cheap query."""

        def query() -> dict[str, int]:
            with self._autocommit() as conn:  # the launcher polls it: one round trip
                rows = conn.execute(_COUNT_STATES, {"sid": study_id}).all()
            return {state.name if isinstance(state, TrialState) else str(state): int(n) for state, n in rows}

        return self._retry(query)

    def has_waiting(self, study_id: int) -> bool:
        """Does the study hold a WAITING (enqueued) trial? One lookup in the (study, state) index."""

        def query() -> bool:
            with self._autocommit() as conn:  # asked before every trial: one round trip
                return conn.execute(_HAS_WAITING, {"sid": study_id}).first() is not None

        return self._retry(query)

    def running_owners(self, study_id: int) -> list[tuple[int, int, dict[str, Any]]]:
        """``(trial_id, number, owner)`` of every RUNNING trial of the study."""
        return self._retry(lambda: read_running_owners(self.scoped_session, study_id))

    def failure_attrs(self, study_id: int, keys: Sequence[str]) -> list[tuple[int, str, dict[str, Any]]]:
        """``(number, state name, {key: value})`` of every PRUNED or FAIL trial, only the user
        attrs ``keys`` (what ``_failures`` needs to tell an error from a pruner decision)."""
        stmt = (
            select(_T.c.number, _T.c.state, _UA.c.key, _UA.c.value_json)
            .select_from(_T.outerjoin(_UA, (_UA.c.trial_id == _T.c.trial_id) & _UA.c.key.in_(list(keys))))
            .where(_T.c.study_id == study_id, _T.c.state.in_([TrialState.PRUNED, TrialState.FAIL]))
        )

        def query() -> list[tuple[int, str, dict[str, Any]]]:
            out: dict[int, tuple[str, dict[str, Any]]] = {}
            with self.engine.connect() as conn:
                for number, state, key, text in conn.execute(stmt):
                    name = state.name if isinstance(state, TrialState) else str(state)
                    entry = out.setdefault(int(number), (name, {}))
                    if key is not None:
                        entry[1][key] = json.loads(text)
            return [(n, state, attrs) for n, (state, attrs) in out.items()]

        return self._retry(query)

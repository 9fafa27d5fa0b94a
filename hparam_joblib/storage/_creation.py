"""Budgeted trial creation: the budget count, the new trial and its owner in one transaction,
retried as a whole, and found again when a lost connection hid whether its commit went through.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._keys import OWNER_KEY
from hparam_joblib.storage._base import BudgetExhausted
from hparam_joblib.storage._buffer import WriteBuffer
from hparam_joblib.storage._fast_path import _BUDGET_TAKEN, _SA, _STUDY_FOR_UPDATE
from hparam_joblib.storage._owners import owner_record
from hparam_joblib.storage._queries import read_running_owners
from hparam_joblib.storage._retrying import Retrying


class BudgetedCreation(Retrying):
    """Optuna's trial creation with our budget and owner (replaces Optuna's own 5-try loop)."""

    _buffer: WriteBuffer
    #: Trials this process created on a server -> when (monotonic): their first heartbeat was
    #: written with them (see ``record_heartbeat``).
    _created_beat: dict[int, float]

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        # Optuna's _CachedStorage calls this directly; replaces Optuna's own 5-try loop (which
        # sleeps up to 2 s per try) with our bounded, counted retry.
        token = uuid.uuid4().hex[:16]  # finds this trial again if the commit's fate is unknown
        began = time.monotonic()  # no later than the first heartbeat the creating transaction writes
        frozen = self._retry(lambda: self._create_trial_once(study_id, template_trial, token), write=True)
        if template_trial is None and not self.is_sqlite and self.heartbeat_interval is not None:
            self._created_beat[frozen._trial_id] = began
        self.created_trial_ids.add(frozen._trial_id)
        self._buffer.adopt(frozen, study_id, mirrored=template_trial is None)
        return frozen

    def _create_trial_once(self, study_id: int, template_trial: FrozenTrial | None, token: str = "") -> FrozenTrial:
        """One attempt: check the budget, insert the trial and its owner, in one transaction."""
        if template_trial is None and self._lost_commit():
            found = self._find_created(study_id, token)  # the lost commit may have gone through
            if found is not None:
                return found
        with _create_scoped_session(self.scoped_session) as session:
            # Locks the study row on servers; on SQLite the first write takes the file lock, and
            # SQLite's serialisable isolation turns a stale count into a lock error we retry.
            # (Core statements: this runs while the write lock is held, so its Python is short.)
            conn = session.connection()
            if conn.execute(_STUDY_FOR_UPDATE, {"sid": study_id}).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            if self.budget is not None:
                taken = int(conn.execute(_BUDGET_TAKEN, {"sid": study_id}).scalar() or 0)
                if taken >= self.budget:
                    raise BudgetExhausted(f"{taken} of {self.budget} trials taken")
            trial = self._get_prepared_new_trial(study_id, template_trial, session)
            trial_id, number = int(trial.trial_id), int(trial.number)
            owner = None
            if template_trial is None:
                owner = owner_record(self.run_id)
                if not self.is_sqlite:
                    owner["token"] = token
                    # The first heartbeat, with the trial: a machine that dies before the
                    # worker's heartbeat thread beats once still leaves a trial that goes stale.
                    session.add(models.TrialHeartbeatModel(trial_id=trial_id))
                # A plain insert: the trial was inserted just above, RUNNING, with no attrs.
                conn.execute(_SA.insert(), [{"trial_id": trial_id, "key": OWNER_KEY, "value_json": json.dumps(owner)}])
            if template_trial is not None:
                frozen = copy.deepcopy(template_trial)
                frozen.number = number
                frozen.datetime_start = trial.datetime_start
                frozen._trial_id = trial_id
                return frozen
            return FrozenTrial(
                number=number, state=TrialState.RUNNING, value=None, values=None,
                datetime_start=trial.datetime_start, datetime_complete=None, params={},
                distributions={}, user_attrs={}, system_attrs={OWNER_KEY: owner},
                intermediate_values={}, trial_id=trial_id,
            )

    def _find_created(self, study_id: int, token: str) -> FrozenTrial | None:
        """The RUNNING trial this process created with ``token``, if its commit went through."""
        owners = self._retry(lambda: read_running_owners(self.scoped_session, study_id))
        for trial_id, _number, owner in owners:
            if owner.get("token") == token:
                return RDBStorage.get_trial(self, trial_id)
        return None

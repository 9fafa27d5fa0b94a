"""The write buffer: a trial this process created writes its params, sampler system attrs and
user attrs in one transaction (``flush_trial``, just before its training starts, so other
workers' samplers see a running trial's params), and what comes later with its final state,
instead of one write transaction per parameter and attribute. Reads in this process include
the buffered writes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from optuna import distributions as optuna_distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sqlalchemy_exc

from hparam_joblib._keys import OWNER_KEY
from hparam_joblib.storage._core_writes import CoreWrites
from hparam_joblib.storage._fast_path import _distribution, _PendingWrites


class WriteBuffer:
    """This process's running trials: their writes not yet sent, and each trial as written so
    far (the mirror, which answers this process's reads of it without a query)."""

    def __init__(self) -> None:
        #: Params and system attrs of our trials.
        self.pending: dict[int, _PendingWrites] = {}
        self.user_attrs: dict[int, dict[str, Any]] = {}
        #: Trials this process created and runs, as written so far (buffered writes included).
        #: Optuna reads a running trial back several times (``Trial()``, ``tell``, lazy system
        #: attrs); nothing but this process writes it until it finishes (other processes only
        #: fail trials whose owner is dead), so these reads are answered here.
        self.mirror: dict[int, FrozenTrial] = {}
        #: Trial id -> study id, for the trials we created.
        self.study_of: dict[int, int] = {}

    def adopt(self, trial: FrozenTrial, study_id: int, mirrored: bool) -> None:
        """Start buffering for a trial this process just created (``mirrored``: it runs it)."""
        self.study_of[trial._trial_id] = study_id
        if mirrored:  # this process is its only writer until it finishes
            self.mirror[trial._trial_id] = copy.deepcopy(trial)

    def add_param(self, trial_id: int, name: str, value: float, dist: Any, previous: Any) -> None:
        """Buffer a param (``previous``: the distribution to check it against, None: look it up)."""
        self.pending.setdefault(trial_id, _PendingWrites([], {})).params.append((name, value, dist, previous))
        mirrored = self.mirror.get(trial_id)
        if mirrored is not None:
            mirrored.distributions[name] = dist
            mirrored.params[name] = dist.to_external_repr(value)

    def set_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Buffer a system attr."""
        self.pending.setdefault(trial_id, _PendingWrites([], {})).system_attrs[key] = value
        if trial_id in self.mirror:
            self.mirror[trial_id].system_attrs[key] = value

    def set_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Buffer a user attr."""
        self.user_attrs.setdefault(trial_id, {})[key] = value
        if trial_id in self.mirror:
            self.mirror[trial_id].user_attrs[key] = value

    def distribution(self, trial_id: int, param_name: str) -> Any:
        """The distribution of ``param_name`` in a buffered (not yet written) param of another
        running trial of ours in the same study, or None."""
        study_id = self.study_of.get(trial_id)
        for other, pending in self.pending.items():
            if other != trial_id and self.study_of.get(other) == study_id:
                for name, _value, dist, _previous in pending.params:
                    if name == param_name:
                        return dist
        return None

    def peek(self, trial_id: int) -> tuple[_PendingWrites | None, dict[str, Any] | None]:
        """The trial's buffered params and system attrs, and its buffered user attrs."""
        return self.pending.get(trial_id), self.user_attrs.get(trial_id)

    def take(self, trial_id: int) -> tuple[_PendingWrites | None, dict[str, Any] | None]:
        """What :meth:`peek` returns, removed from the buffer."""
        return self.pending.pop(trial_id, None), self.user_attrs.pop(trial_id, None)

    def forget(self, trial_id: int) -> None:
        """Drop a finished trial: its buffered writes, its mirror, its study."""
        self.pending.pop(trial_id, None)
        self.user_attrs.pop(trial_id, None)
        self.mirror.pop(trial_id, None)
        self.study_of.pop(trial_id, None)

    def view(self, trial: FrozenTrial) -> FrozenTrial:
        """``trial`` itself, or a copy with this process's buffered writes when it has some (only
        this process's own running trial): the trial read stays as read."""
        if trial._trial_id not in self.pending and not self.user_attrs.get(trial._trial_id):
            return trial
        return self.merged(copy.deepcopy(trial))

    def merged(self, trial: FrozenTrial) -> FrozenTrial:
        """A trial of ours as this process sees it: its buffered writes included (in place)."""
        pending, attrs = self.peek(trial._trial_id)
        if pending is None and not attrs:
            return trial
        if pending is not None:
            for name, value, dist, _ in pending.params:
                trial.distributions[name] = dist
                trial.params[name] = dist.to_external_repr(value)
            trial.system_attrs.update(pending.system_attrs)
        if attrs:
            trial.user_attrs.update(attrs)
        return trial


class BufferedWrites(CoreWrites):
    """Optuna's writes to a trial of ours go to the :class:`WriteBuffer`; anything else is
    written at once (retried)."""

    _buffer: WriteBuffer

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float,
        distribution: optuna_distributions.BaseDistribution,
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float,
        distribution: optuna_distributions.BaseDistribution,
        previous_distribution: optuna_distributions.BaseDistribution | None,
    ) -> None:
        if trial_id not in self.created_trial_ids:
            self._retry(lambda: RDBStorage._set_trial_param(
                self, trial_id, param_name, param_value_internal, distribution, previous_distribution
            ), write=True)
            return
        if previous_distribution is None:  # Optuna's check, at suggest time (again at flush)
            found = self._buffer.distribution(trial_id, param_name)
            if found is None:
                found = self._retry(lambda: self._first_distribution(trial_id, param_name))
            if found is not None:
                optuna_distributions.check_distribution_compatibility(found, distribution)
        else:
            optuna_distributions.check_distribution_compatibility(previous_distribution, distribution)
        self._buffer.add_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)

    def _first_distribution(self, trial_id: int, param_name: str) -> Any:
        """The distribution the study first stored for ``param_name`` (Optuna checks against it)."""
        with _create_scoped_session(self.scoped_session) as session:
            study_id = session.query(models.TrialModel.study_id).filter(
                models.TrialModel.trial_id == trial_id).scalar()
            record = (
                session.query(models.TrialParamModel.distribution_json)
                .join(models.TrialModel)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialParamModel.param_name == param_name)
                .first()
            )
        return None if record is None else _distribution(record[0])

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id in self.created_trial_ids and key != OWNER_KEY:
            self._buffer.set_system_attr(trial_id, key, value)
            return
        self._retry(lambda: RDBStorage.set_trial_system_attr(self, trial_id, key, value), write=True)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """User attrs of a trial this process runs are written with its final state (one
        transaction instead of one each); anything else is written at once."""
        if trial_id in self.created_trial_ids:
            self._buffer.set_user_attr(trial_id, key, value)
            return
        self._retry(lambda: RDBStorage.set_trial_user_attr(self, trial_id, key, value), write=True)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._retry(lambda: RDBStorage.set_trial_intermediate_value(self, trial_id, step, intermediate_value),
                    write=True)
        if trial_id in self._buffer.mirror:
            self._buffer.mirror[trial_id].intermediate_values[step] = intermediate_value

    def flush_trial(self, trial_id: int) -> None:
        """Write the buffered params and attrs of a running trial of ours in one transaction."""
        pending, attrs = self._buffer.take(trial_id)
        if pending is None and not attrs:
            return

        def call() -> None:
            with _create_scoped_session(self.scoped_session, True) as session:
                self._write_pending_without_commit(session, trial_id, pending, attrs)

        self._retry(call, write=True)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        finished = state.is_finished()
        pending, attrs = self._buffer.peek(trial_id) if finished else (None, None)

        def call() -> bool:
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    # The state read FOR UPDATE once, before any write of the transaction.
                    current = self._updatable_state(session.connection(), trial_id, for_update=True)
                    if pending is not None or attrs:
                        self._write_pending_without_commit(session, trial_id, pending, attrs, checked=True)
                    return self._set_state_without_commit(session, trial_id, state, values, current)
            except sqlalchemy_exc.IntegrityError:  # as Optuna's: a concurrent update won
                return False

        try:
            return self._retry(call, write=True, after_lost_commit=lambda: self._holds_state(trial_id, state))
        finally:
            if finished:
                self._buffer.forget(trial_id)
                self.created_trial_ids.discard(trial_id)

    def _holds_state(self, trial_id: int, state: TrialState) -> bool | None:
        """True when the trial already has ``state`` (our lost commit went through), else None."""
        return True if RDBStorage.get_trial(self, trial_id).state == state else None

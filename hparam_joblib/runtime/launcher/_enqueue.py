"""The ``enqueue`` entries: queued once per study, whatever the runs (a key per entry)."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from hparam_joblib._keys import ENQUEUED_KEY
from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime._json import jsonable
from hparam_joblib.storage import BudgetExhausted, StudyStore

logger = logging.getLogger("hparam_joblib")


def enqueue_keys(entries: tuple[Mapping[str, Any], ...]) -> list[str]:
    """A stable key per ``enqueue`` entry: a hash of its values, and its occurrence number
    (so that the same entry listed twice is queued twice, and reordering does not re-queue)."""
    keys = []
    seen: dict[str, int] = {}
    for entry in entries:
        digest = hashlib.sha256(json.dumps(jsonable(entry), sort_keys=True).encode()).hexdigest()[:16]
        seen[digest] = seen.get(digest, 0) + 1
        keys.append(f"{digest}#{seen[digest]}")
    return keys


def enqueue(study: optuna.Study, storage: StudyStore, cfg: SearchConfig) -> None:
    """Queue the ``enqueue`` entries not queued by an earlier run; each takes a budget slot.

    What was queued is recorded in the study's system attr :data:`ENQUEUED_KEY`, entry by
    entry, so a resumed (or interrupted) search never queues an entry twice.
    """
    done = list(storage.get_study_system_attrs(study._study_id).get(ENQUEUED_KEY, []))
    queued = 0
    for key, entry in zip(enqueue_keys(cfg.enqueue), cfg.enqueue):
        if key in done:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.enqueue_trial(dict(entry))
        except BudgetExhausted:
            logger.warning(
                "enqueue: %d entr%s not queued: all %d trials of the budget are taken",
                len(cfg.enqueue) - len(done), "y" if len(cfg.enqueue) - len(done) == 1 else "ies", cfg.n_trials,
            )
            break
        done.append(key)
        storage.set_study_system_attr(study._study_id, ENQUEUED_KEY, done)
        queued += 1
    if queued:
        logger.info("enqueue: queued %d trial(s) to run first", queued)

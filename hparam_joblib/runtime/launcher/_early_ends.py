"""Worker loops that end by themselves before the study is done (see :class:`EarlyEnds`)."""

from __future__ import annotations

import logging

from hparam_joblib._errors import StorageError
from hparam_joblib.runtime.loops._task import WorkerReport
from hparam_joblib.storage import StudyStore

logger = logging.getLogger("hparam_joblib")


class EarlyEnds:
    """Loops that ended by themselves before the study was done, in the launcher's view, without
    running a trial or the launcher's finished count moving: each one found the study done.

    One now and then is a race (a loop saw the last trial finish just before the launcher's read).
    Many in a row mean the launcher's reads of the file are stale: loops would be restarted for
    ever. Then its connections are opened again once; if that does not help, the search stops
    with one line (a file system that does not keep SQLite's locks, such as a network one).
    """

    def __init__(self, limit: int, db: str, budget: int) -> None:
        self.limit = limit
        self.db = db
        self.budget = budget
        self.row = 0
        self.finished: int | None = None
        self.reopened = False

    def check(self, reports: list[WorkerReport], finished: int, storage: StudyStore) -> None:
        """Count these ends.

        Raises:
            StorageError: still in a row after the launcher opened its connections again.
        """
        if any(r.trials_run for r in reports) or finished != self.finished:
            self.row, self.finished = 0, finished
            return
        self.row += len(reports)
        if self.row < self.limit:
            return
        self.row = 0
        if not self.reopened:
            self.reopened = True
            logger.warning(
                "%d worker loops in a row found the study done while this launcher reads %d of %d "
                "trials finished: reading %s again over new connections", self.limit, finished, self.budget, self.db,
            )
            storage.close()
            return
        raise StorageError(
            self.db,
            f"worker loops keep finding the study done while the launcher reads {finished} of "
            f"{self.budget} trials finished, even over new connections: its reads of the file are "
            "stale (is it on a network file system? SQLite needs a local disk)",
        )

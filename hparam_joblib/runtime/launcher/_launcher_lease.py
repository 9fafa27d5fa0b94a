"""The launcher's side of the lease on a shared cluster (see ``runtime/_lease.py``)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from hparam_joblib._errors import HparamError
from hparam_joblib.runtime._lease import LEASE_MISSES, launcher_key, lease_record

logger = logging.getLogger("hparam_joblib")


class LauncherLease:
    """Renew the lease (call :meth:`renew` often; it writes when due), or stop the launch."""

    def __init__(self, storage: Any, study_id: int, run_id: str, interval: float) -> None:
        self.storage = storage
        self.study_id = study_id
        self.key = launcher_key(run_id)
        self.period = interval / LEASE_MISSES
        self.beat = 0
        self.last = -math.inf

    def renew(self, force: bool = False) -> None:
        """Write a new beat when a period passed since the last (or now, with ``force``)."""
        now = time.monotonic()
        if force or now - self.last >= self.period:
            self.beat += 1
            self._write(False)
            self.last = now

    def stop(self, reason: str = "") -> None:
        """Tell every loop of this launch to stop now (best effort: they also time out).

        ``reason`` is what a loop records on a trial it sees stopped: the same text the launcher
        writes on the trials it fails itself, whichever of the two gets there first.
        """
        try:
            self._write(True, reason)
        except HparamError as err:
            logger.warning("could not tell the workers to stop (%s); they stop when the lease expires", err)

    def _write(self, stopped: bool, reason: str = "") -> None:
        """Store the lease record."""
        self.storage.set_study_system_attr(self.study_id, self.key, lease_record(self.beat, stopped, reason))

"""What every worker loop of one launch is started with (:class:`Launch`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hparam_joblib.config._schema import SearchConfig
from hparam_joblib.runtime._failures import ErrorStop
from hparam_joblib.runtime._tracking import TrackingTarget
from hparam_joblib.runtime.loops._task import WorkerTask
from hparam_joblib.runtime.trial._funcref import FunctionRef
from hparam_joblib.storage import RetryPolicy, StorageLocation


@dataclass(frozen=True)
class Launch:
    """One launch of a search: the same for each of its loops (see :meth:`task`)."""

    function: FunctionRef
    #: The workers' config: ``n_trials`` is their budget (the user's plus the retired trials).
    cfg: SearchConfig
    location: StorageLocation
    run_id: str
    policy: RetryPolicy
    #: The trial logs and the workers' messages (absolute).
    log_dir: Path
    #: ``time.time()`` after which no new trial starts (the ``timeout`` stop rule), or None.
    deadline: float | None = None
    #: Seconds each loop starts trials for (``--tune-n-jobs``), or None.
    run_seconds: float | None = None
    tracking: TrackingTarget | None = None
    #: This launch's position in the study's run history (mixed into its loops' seeds).
    launch_number: int = 0

    def task(self, index: int, trials_before: int, error_stop: ErrorStop | None, remote: bool) -> WorkerTask:
        """The task of loop ``index``; ``remote``: a Dask loop (lease, its machine's environment)."""
        return WorkerTask(
            # The location holds absolute paths: a Dask worker's working directory differs.
            function=self.function, config=self.cfg, location=self.location, run_id=self.run_id,
            launcher_pid=os.getpid(), worker_index=index,
            policy=self.policy, deadline=self.deadline, run_seconds=self.run_seconds,
            lease_interval=self.cfg.heartbeat_interval if remote else None,
            trials_before=trials_before, launch_number=self.launch_number, error_stop=error_stop,
            log_dir=str(self.log_dir), tracking=self.tracking,
            environ=None if remote else dict(os.environ),
        )

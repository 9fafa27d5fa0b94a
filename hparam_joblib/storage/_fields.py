"""The fields every study storage keeps besides its methods (what :class:`StudyStore` reads):
where the study lives, its budget, this launch, and the counters a worker reports.
"""

from __future__ import annotations

from hparam_joblib.storage._location import StorageLocation
from hparam_joblib.storage._retry import RetryPolicy


class StoreFields:
    """Base of :class:`SearchStorage` and :class:`JournalSearchStorage`: their common fields."""

    def _init_fields(
        self, location: StorageLocation, db_path: str, budget: int | None, run_id: str, policy: RetryPolicy | None
    ) -> None:
        """Set the fields; ``db_path`` is what errors name (a file, or a server URL without its password)."""
        self.location = location
        self.db_path = db_path
        self.policy = policy or RetryPolicy()
        self.budget = budget
        self.run_id = run_id
        #: The launcher's pid: its processes are not named as lock holders.
        self.family: int | None = None
        self.lock_retries = 0
        self.created_trial_ids: set[int] = set()
        #: Queued (WAITING) trials this process's study took over (``loops/_worker``): with
        #: ``created_trial_ids``, every trial it may run; any other is an upgrade's moved path.
        self.popped_trial_ids: set[int] = set()
        #: Wall time of each top-level storage call (seconds), for the contention benchmark.
        self.op_seconds: list[float] = []

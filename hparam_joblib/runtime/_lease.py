"""The launcher's lease on a shared cluster: what the launcher writes and every loop reads.

A Dask worker's parent is its nanny, possibly on another machine, so it cannot watch the
launcher's pid. The launcher keeps a lease in the study's system attrs instead (the key
:func:`launcher_key`, the record :func:`lease_record`), renewed every ``interval / LEASE_MISSES``
seconds; a loop stops when the record says ``stopped`` (Ctrl-C, an error) or has not changed
for ``LEASE_MISSES`` intervals by the worker's own clock (launcher killed; no clock sync needed).
The launcher's side is ``launcher/_launcher_lease.py``, the loop's ``loops/_watch.py``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from hparam_joblib._keys import LAUNCHER_KEY_PREFIX

#: A lease unchanged for this many intervals means the launcher is gone.
LEASE_MISSES = 3


def launcher_key(run_id: str) -> str:
    """The study system attr that holds the lease of launch ``run_id``."""
    return LAUNCHER_KEY_PREFIX + run_id


def lease_record(beat: int, stopped: bool, reason: str = "") -> dict[str, Any]:
    """The lease as stored: a beat that changes at each renewal, who holds it, and the stop."""
    record: dict[str, Any] = {"beat": beat, "host": socket.gethostname(), "pid": os.getpid(), "stopped": stopped}
    if reason:
        record["reason"] = reason
    return record


def stop_reason(record: Any) -> str | None:
    """The launcher's reason for stopping the launch ("" when it gave none), or None: not stopped."""
    if not (isinstance(record, dict) and record.get("stopped")):
        return None
    return str(record.get("reason") or "")

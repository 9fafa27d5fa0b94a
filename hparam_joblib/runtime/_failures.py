"""Why a trial did not complete, in four words a user can tell apart, and the stop-fast rule.

Every PRUNED or FAIL trial has one *kind*, stored as its user attr ``failure_kind`` (and
inferred from its other attrs for trials written before that attr existed):

=============== ======= ======================================================= ==============
kind            state   what happened                                           counts?
=============== ======= ======================================================= ==============
``error``       PRUNED  the function raised, returned no finite number, or its  yes
                        trial process crashed (segfault, ``os._exit``)
``pruner``      PRUNED  ``report()`` and the pruner stopped it                 yes
``timeout``     PRUNED  it ran past ``trial_timeout``                          yes
``worker_died`` FAIL    the worker process running it died                     no (re-run)
``interrupted`` FAIL    Ctrl-C / SIGTERM / the launcher stopped the search     no (re-run)
``out_of_       PRUNED  the kernel killed it for memory while no other trial   yes
memory``                of the search ran: the configuration does not fit
``out_of_       FAIL    killed for memory with other trials beside it: the     no (re-run)
memory_beside``         search then runs fewer trials at once (``loops/_jobs``)
=============== ======= ======================================================= ==============

Out of memory is never the stop-fast rule's "broken code".

"counts" is toward ``n_trials``. ``--retry-failed`` *retires* the ``error`` trials (study
system attr :data:`~hparam_joblib._keys.RETIRED_KEY`): they stay PRUNED with their reason but no longer count.

The stop-fast rule (:class:`ErrorStop`): when the first ``max_trial_errors`` trials that one
run finishes all failed by an error, the code is broken, not a region of the space; the
search stops with exit status 1 and one line naming the exception and the user's file and
line. Once any trial of the run ends otherwise, the rule is off for the rest of the run.
"""

from __future__ import annotations

import logging
import re
import sysconfig
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hparam_joblib._errors import TrainingCodeError
from hparam_joblib._keys import (
    ERROR,
    FAILURE_KIND_KEY,
    FAILURE_REASON_KEY,
    FAILURE_TRACEBACK_KEY,
    FAILURE_TYPE_KEY,
    INTERRUPTED,
    OUT_OF_MEMORY,
    OUT_OF_MEMORY_BESIDE,
    OWNER_KEY,
    PRUNED_STEP_KEY,
    PRUNER,
    RETIRED_KEY,
    TIMEOUT,
    WORKER_DIED,
)
from hparam_joblib.storage import failure_attrs

logger = logging.getLogger("hparam_joblib")

#: Kinds in the order they are shown, with their label.
LABELS: dict[str, str] = {
    ERROR: "failed by an error",
    PRUNER: "pruned by the pruner",
    TIMEOUT: "timed out",
    WORKER_DIED: "worker died",
    INTERRUPTED: "interrupted",
    OUT_OF_MEMORY: "out of memory alone",
    OUT_OF_MEMORY_BESIDE: "out of memory beside other trials",
}
#: Short names for the progress bar.
SHORT: dict[str, str] = {
    ERROR: "errors", PRUNER: "pruned", TIMEOUT: "timeouts", WORKER_DIED: "worker_died",
    INTERRUPTED: "interrupted", OUT_OF_MEMORY: "oom", OUT_OF_MEMORY_BESIDE: "oom_rerun",
}
_ATTRS = (FAILURE_KIND_KEY, PRUNED_STEP_KEY, FAILURE_REASON_KEY)
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$', re.MULTILINE)
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve()) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def kind_of(state: str, attrs: Mapping[str, Any]) -> str | None:
    """The kind of a trial in ``state`` (a state name) with these user attrs; None unless
    PRUNED or FAIL."""
    stored = attrs.get(FAILURE_KIND_KEY)
    if state not in ("PRUNED", "FAIL"):
        return None
    if isinstance(stored, str) and stored in LABELS:
        return stored
    reason = str(attrs.get(FAILURE_REASON_KEY) or "")
    if state == "FAIL":
        stopped = ("interrupted", "stopped", "not run:", "the search stopped")
        return INTERRUPTED if any(s in reason for s in stopped) else WORKER_DIED
    if PRUNED_STEP_KEY in attrs or reason.startswith("pruned by the pruner") or not reason:
        return PRUNER
    if reason.startswith("timeout"):
        return TIMEOUT
    return ERROR


def trial_kind(trial: FrozenTrial) -> str | None:
    """:func:`kind_of` for a trial read through Optuna."""
    return kind_of(trial.state.name, trial.user_attrs)


def kind_counts(storage: Any, study_id: int) -> dict[str, int]:
    """``{kind: count}`` of the study's PRUNED and FAIL trials (one query on an RDB storage)."""
    rows = _failure_rows(storage, study_id)
    counts = Counter(k for k in (kind_of(state, attrs) for _, state, attrs in rows) if k)
    return {k: counts[k] for k in LABELS if counts.get(k)}


def _failure_rows(storage: Any, study_id: int) -> list[tuple[int, str, dict[str, Any]]]:
    """``(number, state name, {attr: value})`` of every PRUNED or FAIL trial (the attrs that
    tell the kind), read the cheapest way the storage can."""
    return failure_attrs(storage, study_id, _ATTRS)


def retired(storage: Any, study_id: int) -> set[int]:
    """Numbers of the trials ``--retry-failed`` retired (they no longer count)."""
    value = storage.get_study_system_attrs(study_id).get(RETIRED_KEY) or []
    return {int(n) for n in value if isinstance(n, int)}


def retire_errors(storage: Any, study_id: int) -> list[int]:
    """Retire every error trial not retired yet; returns their numbers (ascending)."""
    done = retired(storage, study_id)
    new = sorted(
        number for number, state, attrs in _failure_rows(storage, study_id)
        if state == "PRUNED" and kind_of(state, attrs) == ERROR and number not in done
    )
    if new:
        storage.set_study_system_attr(study_id, RETIRED_KEY, sorted(done | set(new)))
    return new


def count_errors(storage: Any, study_id: int, exclude: Iterable[int] = ()) -> int:
    """Error trials not retired (what ``--retry-failed`` would re-run)."""
    skip = set(exclude)
    return sum(
        1 for number, state, attrs in _failure_rows(storage, study_id)
        if state == "PRUNED" and kind_of(state, attrs) == ERROR and number not in skip
    )


@dataclass(frozen=True)
class Frame:
    """One traceback frame: where the user's code was when it raised."""

    file: str
    line: int
    func: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.func}"


def user_frame(traceback_text: str) -> Frame | None:
    """The last frame of the user's own code in a formatted traceback: outside hparam_joblib
    and, when there is one, outside the standard library and installed packages."""
    frames = [
        Frame(m.group("file"), int(m.group("line")), m.group("func").strip())
        for m in _FRAME.finditer(traceback_text or "")
    ]
    outside = [f for f in frames if not _under(f.file, (_PACKAGE_DIR,))]
    own = [f for f in outside if not _under(f.file, _LIBRARY_DIRS) and not f.file.startswith("<frozen")]
    pick = own or outside
    return pick[-1] if pick else None


def _under(file: str, dirs: tuple[str, ...]) -> bool:
    try:
        resolved = str(Path(file).resolve())
    except (OSError, RuntimeError):
        resolved = file
    return any(resolved == d or resolved.startswith(d.rstrip("/") + "/") for d in dirs)


class ErrorStop:
    """The stop-fast rule for one run (see the module docstring); the launcher calls
    :meth:`check` at every poll."""

    def __init__(self, limit: int, run_id: str, counts: Mapping[str, int]) -> None:
        self.limit = limit
        self.run_id = run_id
        self.armed = limit > 0
        self.complete_at_start = counts.get("COMPLETE", 0)
        self.pruned_at_start = counts.get("PRUNED", 0)
        self._seen_pruned = -1

    def check(self, storage: Any, study_id: int, counts: Mapping[str, int]) -> list[FrozenTrial] | None:
        """The run's first ``limit`` finished trials when all failed by an error (stop), else
        None (and the rule turns itself off once a trial of the run ends otherwise)."""
        if not self.armed:
            return None
        if counts.get("COMPLETE", 0) > self.complete_at_start:
            self.armed = False  # the code works (at least somewhere): never stop for errors now
            return None
        pruned = counts.get("PRUNED", 0)
        if pruned - self.pruned_at_start < self.limit or pruned == self._seen_pruned:
            return None
        self._seen_pruned = pruned
        ours = sorted(
            (t for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.PRUNED,))
             if (t.system_attrs.get(OWNER_KEY) or {}).get("run") == self.run_id),
            key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number),
        )
        first = ours[: self.limit]
        if any(trial_kind(t) != ERROR for t in first):
            self.armed = False
            return None
        return first if len(first) >= self.limit else None


def broken_code_error(
    first: list[FrozenTrial], limit: int, study_name: str, db_shown: str, traceback_file: Path | None,
    main_file: str | None = None,
) -> TrainingCodeError:
    """The one-line error for :class:`ErrorStop`: the last trial's exception, the user's file
    and line, and where the full traceback is.

    ``main_file`` names frames that cloudpickle shipped by value (``<dynamic-code>``: code
    defined in the script itself, whose line numbers it keeps)."""
    last = first[-1]
    reason = str(last.user_attrs.get(FAILURE_REASON_KEY) or "an error").splitlines()[0]
    types = Counter(str(t.user_attrs.get(FAILURE_TYPE_KEY) or "error") for t in first)
    same = "" if len(types) == 1 else f" (types: {', '.join(f'{k} x{v}' for k, v in types.most_common())})"
    frame = user_frame(str(last.user_attrs.get(FAILURE_TRACEBACK_KEY) or ""))
    if frame is not None and frame.file == "<dynamic-code>" and main_file:
        frame = Frame(main_file, frame.line, frame.func)
    where = f" at {frame}" if frame else ""
    if traceback_file is not None:
        full = f"full traceback: {traceback_file}"
    else:
        full = f"full traceback: user attr failure_traceback of trial {last.number} in {db_shown}"
    return TrainingCodeError(
        f"the first {len(first)} trials of this run all failed by an error and none completed "
        f"(max_trial_errors={limit}): trial {last.number}: {reason}{where}{same}; {full}; "
        f"fix the code, then run the same command with --retry-failed to re-run them "
        f"(study {study_name})",
        short=f"the first {len(first)} trials of this run all failed by an error ({reason})",
    )

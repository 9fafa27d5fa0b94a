"""Show what the workers and (with ``trial_output: terminal``) the trials print, above the bar.

The loky workers of a launch write their messages to that launch's ``workers_<run id>.log``
and each trial writes its own log file; the launcher, which owns the terminal, follows its own
workers' file (never another launch's) and prints their new complete lines through the progress
bar (``tqdm.write``), so that the bar is never mangled by other output. The workers' file is
removed at the end when nothing was written to it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from hparam_joblib._keys import OWNER_KEY
from hparam_joblib._logging import tqdm_class

_TRIAL_LOG = re.compile(r"trial_(\d+)\.log$")


class _Followed:
    def __init__(self, path: Path, prefix: str, offset: int) -> None:
        self.path = path
        self.prefix = prefix
        self.offset = offset
        self.partial = b""


class LogFollower:
    """Follows files in one directory from where they stood when it started (see module doc).

    Args:
        directory: the log directory of the search.
        workers_log: the workers' log file name in it (always followed).
        trials: also follow ``trial_NNNNN.log`` files that appear (``trial_output: terminal``).
        mine: whether trial number N is this launch's (None: not known yet, asked again at the
            next poll); another launch's trials of the study are not shown. None: every trial.
    """

    def __init__(self, directory: Path, workers_log: str, trials: bool,
                 mine: Callable[[int], bool | None] | None = None) -> None:
        self.directory = directory
        self.trials = trials
        self.mine = mine
        self.files: dict[str, _Followed] = {}
        #: Trial logs that existed before this run (earlier runs' trials): not shown again.
        self.old: set[str] = set()
        self.workers = directory / workers_log
        self.files[workers_log] = _Followed(self.workers, "", _size(self.workers))
        if trials and directory.is_dir():
            self.old = {e.name for e in os.scandir(directory) if _TRIAL_LOG.search(e.name)}

    def poll(self) -> None:
        """Print the complete lines written since the last poll."""
        if self.trials and self.directory.is_dir():
            for entry in os.scandir(self.directory):
                if entry.name in self.files or entry.name in self.old:
                    continue
                match = _TRIAL_LOG.search(entry.name)
                if not match:
                    continue
                number = int(match.group(1))
                ours = True if self.mine is None else self.mine(number)
                if ours is None:
                    continue
                if not ours:  # another launch of the study runs it: that launch shows it
                    self.old.add(entry.name)
                    continue
                self.files[entry.name] = _Followed(Path(entry.path), f"[trial {number}] ", 0)
        for followed in self.files.values():
            for line in _new_lines(followed):
                tqdm_class().write(followed.prefix + line, file=sys.stderr)

    def close(self) -> None:
        """Print what is left (lines without a final newline included); remove the workers'
        file if it stayed empty (most launches: one file per launch would pile up)."""
        self.poll()
        for followed in self.files.values():
            if followed.partial:
                tqdm_class().write(followed.prefix + followed.partial.decode("utf-8", "replace"), file=sys.stderr)
                followed.partial = b""
        try:
            if self.workers.stat().st_size == 0:
                self.workers.unlink()
        except OSError:
            pass


def run_trials(storage: Any, study_id: int, run_id: str) -> Callable[[int], bool | None]:
    """``mine`` for :class:`LogFollower`: is trial N owned by launch ``run_id`` (its owner record,
    written with the trial)? None while the storage cannot say (not there yet, or busy)."""

    def mine(number: int) -> bool | None:
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            owner = storage.get_trial_system_attrs(trial_id).get(OWNER_KEY)
        except Exception:  # noqa: BLE001 - asked again at the next poll
            return None
        return isinstance(owner, dict) and cast("dict[str, Any]", owner).get("run") == run_id

    return mine


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _new_lines(followed: _Followed) -> list[str]:
    try:
        with open(followed.path, "rb") as fh:
            fh.seek(followed.offset)
            data = fh.read(1 << 20)
    except OSError:
        return []
    if not data:
        return []
    followed.offset += len(data)
    data = followed.partial + data
    *lines, followed.partial = data.split(b"\n")
    return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

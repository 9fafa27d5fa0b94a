"""Likely typos of reserved keys: an error for a ``--set`` key, a note for a key of the file."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hparam_joblib._errors import OverrideError
from hparam_joblib.config._overrides import Override, resolve_path
from hparam_joblib.config._schema import RESERVED_KEYS


def check_new_key_typos(raw: Mapping[str, Any], overrides: list[Override], path: Path) -> None:
    """A ``--set`` key that is not in the file and one edit from a study setting is a typo.

    Raises:
        OverrideError: naming the item and the setting it was probably meant to be.
    """
    for item in overrides:
        top = resolve_path(dict(raw), item.path)[0]
        if top in raw or top in RESERVED_KEYS:
            continue
        close = [r for r in RESERVED_KEYS if edit_distance(top, r) == 1]
        if close:
            rest = item.text.partition("=")[2]
            raise OverrideError(
                item.text,
                f"{top} is not in {path.name} and is not a setting; did you mean {close[0]!r} "
                f"(--set {'.'.join((close[0], *item.path[1:]))}={rest.strip()})? To pass a new fixed "
                f"parameter named {top}, add it to {path.name}",
            )


def typo_notes(raw: Mapping[str, Any], path: Path) -> list[str]:
    """A note for each top-level key that looks like a misspelt reserved key."""
    notes = []
    for key in raw:
        if key in RESERVED_KEYS:
            continue
        close = [r for r in RESERVED_KEYS if edit_distance(key, r) == 1]
        if not close:
            close = difflib.get_close_matches(key, RESERVED_KEYS, n=1, cutoff=0.9)
        if close:
            notes.append(
                f"{path.name}: {key}: not a reserved key, so it is passed to the function as a "
                f"fixed parameter; did you mean {close[0]!r}?"
            )
    return notes


def edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (adjacent swaps count as one edit)."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]

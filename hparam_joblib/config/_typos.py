"""Likely typos of settings: an error for a key of the file or of ``--set``, unless it is meant.

A top-level key that is not a setting is a fixed parameter for the training function, so a
misspelt setting would run anyway, with the setting at its default (``direciton: maximize``
minimizes). The rule: a key one edit from a setting of 5+ letters (a letter added, missing,
changed or two swapped; case and ``-`` for ``_`` count as typos too), or as close to a long one
(difflib ratio >= 0.9), is an error; so is a key other than ``sweep_parameters`` whose value is a
search space (every entry a mapping with a parameter ``type``). A key one edit from a short
setting (``tags``, ``seeds``, ``gpu``: common fixed parameters) gets a note instead. A fixed
parameter that is meant to look like a setting is listed under ``not_settings: [samples]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hparam_joblib._errors import OverrideError
from hparam_joblib.config._checker import Checker
from hparam_joblib.config._overrides import SWEEP_KEY, Override, resolve_path
from hparam_joblib.config._schema import ALLOW_KEY, PARAM_TYPES, RESERVED_KEYS

#: Settings this short are one edit from common words (tau, speed, gpu): a note, not an error.
_SHORT = 4


def allowed_keys(resolved: Mapping[str, Any], check: Checker) -> frozenset[str]:
    """The keys ``not_settings`` lists: the user's own keys that look like a setting.

    Raises:
        ConfigError: not a list of names, a setting listed, or a name that is not a key.
    """
    value = resolved.get(ALLOW_KEY)
    if value is None:
        return frozenset()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise check.fail(ALLOW_KEY, f"must be a list of your own top-level keys, e.g. [samples], got {value!r}")
    for name in names:
        if name in RESERVED_KEYS:
            raise check.fail(
                ALLOW_KEY, f"{name} is a setting; list only your own keys whose names look like one"
            )
        if name not in resolved:
            raise check.fail(ALLOW_KEY, f"{name} is not a top-level key of the file")
    return frozenset(names)


def listed(raw: Mapping[str, Any]) -> frozenset[str]:
    """The names ``not_settings`` lists, unchecked (:func:`allowed_keys` checks them later)."""
    value = raw.get(ALLOW_KEY)
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(n for n in names if isinstance(n, str))


def check_file_typos(
    file_keys: Iterable[str], resolved: Mapping[str, Any], allowed: frozenset[str], check: Checker
) -> None:
    """A top-level key of the file that looks like a setting is an error, unless allowed.

    Raises:
        ConfigError: naming the key, the setting it was probably meant to be, and the escape.
    """
    for key in file_keys:
        if key in RESERVED_KEYS or key in allowed:
            continue
        meant = close_setting(key)
        if meant is None and SWEEP_KEY not in resolved and looks_like_space(resolved.get(key)):
            meant = SWEEP_KEY
        if meant is None:
            continue
        what = "nothing would be searched" if meant == SWEEP_KEY else f"{meant} would keep its default"
        raise check.fail(
            key,
            f"not a setting, so it would reach your function as a fixed parameter and {what}; "
            f"did you mean {meant!r}? If {key} is for your function, list it: {ALLOW_KEY}: [{key}]",
        )


def check_new_key_typos(
    raw: Mapping[str, Any], overrides: list[Override], path: Path, allowed: frozenset[str] = frozenset()
) -> None:
    """A ``--set`` key that is not in the file and one edit from a study setting is a typo.

    Raises:
        OverrideError: naming the item and the setting it was probably meant to be.
    """
    for item in overrides:
        top = resolve_path(dict(raw), item.path)[0]
        if top in raw or top in RESERVED_KEYS or top in allowed:
            continue
        close = [r for r in RESERVED_KEYS if edit_distance(top, r) == 1]
        if close:
            rest = item.text.partition("=")[2]
            raise OverrideError(
                item.text,
                f"{top} is not in {path.name} and is not a setting; did you mean {close[0]!r} "
                f"(--set {'.'.join((close[0], *item.path[1:]))}={rest.strip()})? To pass a new fixed "
                f"parameter named {top}, add it to {path.name} with {ALLOW_KEY}: [{top}]",
            )


def typo_notes(resolved: Mapping[str, Any], path: Path, allowed: frozenset[str] = frozenset()) -> list[str]:
    """A note for each top-level key one edit from a short setting (``tags`` for ``tag``)."""
    notes = []
    for key in resolved:
        if key in RESERVED_KEYS or key in allowed:
            continue
        close = [r for r in RESERVED_KEYS if len(r) <= _SHORT and edit_distance(key.lower(), r) <= 1]
        if close:
            notes.append(
                f"{path.name}: {key}: not a setting, so it is passed to the function as a "
                f"fixed parameter; did you mean {close[0]!r}? ({ALLOW_KEY}: [{key}] silences this)"
            )
    return notes


def close_setting(key: str) -> str | None:
    """The setting (5+ letters) ``key`` is probably a typo of, or None."""
    text = key.strip().lower().replace("-", "_")
    for setting in RESERVED_KEYS:
        if len(setting) > _SHORT and edit_distance(text, setting) <= 1:
            return setting
    close = difflib.get_close_matches(text, [r for r in RESERVED_KEYS if len(r) > _SHORT], n=1, cutoff=0.9)
    return close[0] if close else None


def looks_like_space(value: Any) -> bool:
    """True for a mapping whose every entry is a sweep-parameter spec (``{type: float, ...}``)."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(spec, dict) and spec.get("type") in PARAM_TYPES for spec in value.values()
    )


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for a setting name within a typo of a valid one, else ``""``."""
    valid = list(valid)
    close = [v for v in valid if edit_distance(name.lower(), v.lower()) <= 1]
    close = close or difflib.get_close_matches(name, valid, n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


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

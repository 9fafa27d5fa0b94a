"""``--set a.b=c`` items: parse them into (path, YAML-typed value) and apply them to a mapping.

The key grammar: names joined by ``.``; a part in quotes is one name even with dots in it
(``sweep_parameters."model.width".high``). Without quotes, a run of parts that names an existing
dotted key is that key (``sweep_parameters.model.width.high`` reaches the sweep parameter
``model.width``), and a new name under ``sweep_parameters`` is everything up to the setting
(``sweep_parameters.model.depth.high`` creates parameter ``model.depth``).

No Optuna, no I/O: a pure transformation of the raw configuration mapping.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from hparam_joblib._errors import OverrideError
from hparam_joblib.config._yaml import load_yaml

#: The section whose keys are sweep-parameter names (often dotted).
SWEEP_KEY = "sweep_parameters"
#: The settings a sweep-parameter spec takes (``_params`` checks which fit which type).
PARAM_SETTINGS: tuple[str, ...] = ("type", "low", "high", "log", "step", "choices", "when")


@dataclass(frozen=True)
class Override:
    """One parsed ``--set`` item."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def key(self) -> str:
        """The dotted key as typed."""
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """Parse ``key.path=value``; the value is read as YAML (``False``, ``null``, ``1e-3``, ``[1, 2]``)."""
    if "=" not in text:
        raise OverrideError(text, "expected key=value (e.g. --set n_trials=200)")
    key, _, raw_value = text.partition("=")
    key = key.strip()
    if not key:
        raise OverrideError(text, "the key before '=' is empty; expected key=value")
    path = split_key(key, text)
    try:
        value = load_yaml(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise OverrideError(text, f"value is not valid YAML ({problem})") from err
    return Override(text=text, path=path, value=value)


def apply_overrides(raw: dict[str, Any], overrides: list[Override]) -> tuple[dict[str, Any], list[str]]:
    """Apply overrides to a deep copy of ``raw``.

    Returns:
        The new mapping, and the dotted keys that did not exist before (created by an override).

    Raises:
        OverrideError: an override walks through a value that is not a mapping.
    """
    result = copy.deepcopy(raw)
    created: list[str] = []
    for item in overrides:
        node: dict[str, Any] = result
        walked: list[str] = []
        is_new = False
        path = resolve_path(result, item.path)
        for typed in path[:-1]:
            walked.append(typed)
            part = _existing_key(node, typed)
            if part not in node:
                node[part] = {}
                is_new = True
            elif not isinstance(node[part], dict):
                raise OverrideError(
                    item.text,
                    f"{'.'.join(walked)} is {_describe(node[part])}, not a mapping, "
                    f"so {item.key} cannot be set inside it",
                )
            node = node[part]
        last = _existing_key(node, path[-1])
        if last not in node:
            is_new = True
        node[last] = copy.deepcopy(item.value)
        if is_new:
            created.append(item.key)
    return result, created


def split_key(key: str, text: str) -> tuple[str, ...]:
    """``a.b."c.d"`` -> ``("a", "b", "c.d")``: dots split, except inside single or double quotes.

    Raises:
        OverrideError: an empty part, an unclosed quote, or a quote in the middle of a part.
    """
    parts: list[str] = []
    buf: list[str] = []
    quote = ""
    closed = False  # a quoted part just ended: only '.' may follow
    for ch in key:
        if quote:
            if ch == quote:
                quote, closed = "", True
            else:
                buf.append(ch)
        elif ch == ".":
            parts.append("".join(buf))
            buf, closed = [], False
        elif closed:
            raise OverrideError(text, f"key {key!r}: a quoted name must be followed by '.' or '='")
        elif ch in "\"'":
            if buf:
                raise OverrideError(text, f"key {key!r}: a quote may only start a name (\"model.width\")")
            quote = ch
        else:
            buf.append(ch)
    if quote:
        raise OverrideError(text, f"key {key!r}: the quote {quote} is not closed")
    parts.append("".join(buf))
    if any(not part for part in parts):
        raise OverrideError(text, f"key {key!r} has an empty part; expected names joined by '.'")
    return tuple(parts)


def resolve_path(raw: dict[str, Any], path: tuple[str, ...]) -> tuple[str, ...]:
    """The keys ``path`` names in ``raw``: dotted keys that exist are one key (the longest match
    at each level); a new name under ``sweep_parameters`` is everything before a setting name."""
    out: list[str] = []
    node: Any = raw
    i = 0
    while i < len(path):
        end = _longest_existing(node, path, i) if isinstance(node, dict) else None
        if end is None:
            rest = path[i:]
            if out == [SWEEP_KEY] or (not out and rest[0] == SWEEP_KEY):
                if not out:
                    out.append(SWEEP_KEY)
                    rest = rest[1:]
                if not rest:
                    break
                if len(rest) > 1 and rest[-1] in PARAM_SETTINGS:
                    out += [".".join(rest[:-1]), rest[-1]]
                else:
                    out.append(".".join(rest))
                break
            out.extend(rest)
            break
        name = ".".join(path[i:end])
        out.append(name)
        node = node[_existing_key(node, name)]
        i = end
    return tuple(out)


def _longest_existing(node: dict[Any, Any], path: tuple[str, ...], start: int) -> int | None:
    for end in range(len(path), start, -1):
        if _existing_key(node, ".".join(path[start:end])) in node:
            return end
    return None


def _existing_key(node: dict[Any, Any], typed: str) -> Any:
    """The key of ``node`` that ``typed`` names: YAML keys such as ``0`` or ``1.5`` are not strings."""
    if typed in node:
        return typed
    return next((k for k in node if not isinstance(k, str) and str(k) == typed), typed)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"a {type(value).__name__} ({value!r})"

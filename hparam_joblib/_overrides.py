"""``--set a.b=c`` items: parse them into (path, YAML-typed value) and apply them to a mapping.

No Optuna, no I/O: a pure transformation of the raw configuration mapping.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from hparam_joblib._errors import OverrideError
from hparam_joblib._yaml import load_yaml


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
    path = tuple(key.split("."))
    if any(not part for part in path):
        raise OverrideError(text, f"key {key!r} has an empty part; expected names joined by '.'")
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
        for typed in item.path[:-1]:
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
        last = _existing_key(node, item.path[-1])
        if last not in node:
            is_new = True
        node[last] = copy.deepcopy(item.value)
        if is_new:
            created.append(item.key)
    return result, created


def _existing_key(node: dict[Any, Any], typed: str) -> Any:
    """The key of ``node`` that ``typed`` names: YAML keys such as ``0`` or ``1.5`` are not strings."""
    if typed in node:
        return typed
    return next((k for k in node if not isinstance(k, str) and str(k) == typed), typed)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return f"a {type(value).__name__} ({value!r})"

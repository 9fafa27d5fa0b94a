"""The checks every section validator shares: one error shape, and names, integers, numbers, seconds.

An error names the file and the key, and the ``--set`` item that set the key when one did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, overload

from hparam_joblib._errors import ConfigError
from hparam_joblib.config._overrides import Override

#: Characters that would let a study or tag name leave the save directory.
_NAME_FORBIDDEN = ("/", "\\", "\x00")


class Checker:
    """Validation helpers that know the file name (and the ``--set`` items) for messages."""

    def __init__(self, source: str, overrides: tuple[Override, ...] = ()) -> None:
        self.source = source
        self.overrides = overrides

    def fail(self, key: str, message: str, related: tuple[str, ...] = ()) -> ConfigError:
        """The error for ``key``; names the ``--set`` item that set it (or a ``related`` key)."""
        for item in reversed(self.overrides):
            for k in (key, *related):
                if k == item.key or k.startswith(item.key + ".") or item.key.startswith(k + "."):
                    return ConfigError(f"{self.source} (with --set {item.text!r})", key, message)
        return ConfigError(self.source, key, message)

    def name(self, raw: Mapping[str, Any], key: str, default: str) -> str:
        """``experiment_name`` or ``tag``: a non-empty name that stays inside the save directory."""
        value = raw.get(key, default)
        if isinstance(value, bool):
            raise self.fail(
                key, f"must be a string, got {value!r} (YAML reads yes/no/on/off as booleans; quote it)"
            )
        if not isinstance(value, (str, int, float)):
            raise self.fail(key, f"must be a string, got {value!r}")
        text = str(value).strip()
        if not text:
            raise self.fail(key, "must not be empty")
        if any(ch in text for ch in _NAME_FORBIDDEN) or text in {".", ".."} or ".." in text:
            raise self.fail(
                key,
                f"{text!r} would leave the save directory; use letters, digits, '-', '_' or '.'",
            )
        return text

    def integer(self, raw: Mapping[str, Any], key: str, default: int | None, minimum: int) -> int:
        """``raw[key]`` as an integer >= ``minimum``; ``default`` when absent (None: required)."""
        if key not in raw or raw[key] is None:
            if default is None:
                raise self.fail(key, f"is required (an integer >= {minimum})")
            return default
        value = as_int(raw[key])
        if value is None or value < minimum:
            raise self.fail(key, f"must be an integer >= {minimum}, got {raw[key]!r}")
        return value

    def optional_integer(self, raw: Mapping[str, Any], key: str, minimum: int) -> int | None:
        """``raw[key]`` as an integer >= ``minimum``, or None when absent or null."""
        return None if raw.get(key) is None else self.integer(raw, key, None, minimum)

    def boolean(self, raw: Mapping[str, Any], key: str, default: bool) -> bool:
        """``raw[key]`` as true/false; ``default`` when absent or null."""
        if raw.get(key) is None:
            return default
        if not isinstance(raw[key], bool):
            raise self.fail(key, f"must be true or false, got {raw[key]!r}")
        return bool(raw[key])

    def number(self, value: Any, key: str) -> float:
        """``value`` as a finite number."""
        number = as_number(value)
        if number is None:
            raise self.fail(key, f"must be a number, got {value!r}")
        return number

    @overload
    def seconds(self, raw: Mapping[str, Any], key: str, default: float) -> float: ...
    @overload
    def seconds(self, raw: Mapping[str, Any], key: str, default: None = None) -> float | None: ...

    def seconds(self, raw: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
        """``raw[key]`` as a number of seconds > 0; ``default`` when absent or null."""
        if raw.get(key) is None:
            return default
        value = self.number(raw[key], key)
        if value <= 0:
            raise self.fail(key, f"must be a number of seconds > 0, got {raw[key]!r}")
        return value


def as_int(value: Any) -> int | None:
    """``value`` as an integer (``3``, ``3.0``, ``"3"``, ``"3e2"``), or None (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return as_int(float(value)) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            return None
    return None


def as_number(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric strings), or None (booleans too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None

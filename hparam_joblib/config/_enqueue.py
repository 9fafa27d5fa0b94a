"""Section validator for ``enqueue:``: trials to run first, each a partial set of sweep values
that lie in the space and that the conditions use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hparam_joblib.config._algorithms import AlgorithmSpec
from hparam_joblib.config._checker import Checker
from hparam_joblib.config._schema import ParamSpec
from hparam_joblib.config._typos import did_you_mean


def validate_enqueue(
    section: Any, params: tuple[ParamSpec, ...], sampler: AlgorithmSpec, check: Checker
) -> tuple[Mapping[str, Any], ...]:
    """A list of partial configs: ``{dotted name: value}`` or nested mappings of them."""
    if section is None:
        return ()
    if not isinstance(section, list):
        raise check.fail("enqueue", f"must be a list of parameter mappings, got {section!r}")
    if section and sampler.type == "grid":
        raise check.fail("enqueue", "cannot be combined with the grid sampler (it tries every point)",
                         ("sampler.type",))
    by_name = {p.name: p for p in params}
    names = ", ".join(by_name) or "none"
    entries = []
    for i, entry in enumerate(section):
        key = f"enqueue[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise check.fail(key, f"must be a non-empty mapping of sweep parameter to value, got {entry!r}")
        flat: dict[str, Any] = {}
        _flatten_entry(entry, "", by_name, flat, key, names, check)
        for name, value in flat.items():
            spec = by_name[name]
            if not spec.contains(value):
                raise check.fail(f"{key}.{name}", f"{value!r} is not in the space of {name} ({spec.describe()})")
        for name in flat:
            spec = by_name[name]
            if all(other in flat for other, _ in spec.when) and not spec.active(flat):
                raise check.fail(
                    f"{key}.{name}",
                    f"is never used: its condition ({spec.condition_text()}) is false for this entry's values",
                )
        entries.append(flat)
    return tuple(entries)


def _flatten_entry(
    node: Mapping[str, Any], prefix: str, by_name: Mapping[str, ParamSpec], out: dict[str, Any],
    key: str, names: str, check: Checker,
) -> None:
    """Collect ``{dotted name: value}`` from an entry's nested mappings into ``out``."""
    for part, value in node.items():
        name = f"{prefix}{part}"
        if name in by_name:
            out[name] = value
        elif isinstance(value, dict) and any(n.startswith(name + ".") for n in by_name):
            _flatten_entry(value, name + ".", by_name, out, key, names, check)
        else:
            raise check.fail(f"{key}.{name}", f"not a sweep parameter; sweep parameters: {names}"
                             + did_you_mean(name, by_name))

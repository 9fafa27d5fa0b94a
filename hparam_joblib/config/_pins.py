"""Pins: a ``--set`` item that names a sweep parameter fixes its value for this run.

The parameter leaves ``sweep_parameters`` (and the ``enqueue`` entries) and its value lands at
its dotted path among the fixed values; conditions that name it are resolved against that value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hparam_joblib.config._checker import Checker
from hparam_joblib.config._overrides import SWEEP_KEY, Override
from hparam_joblib.config._schema import among

#: The pinned value of a parameter dropped for its condition: no condition value equals it.
_DROPPED = object()


def split_pins(raw: Mapping[str, Any], overrides: list[Override]) -> tuple[list[Override], list[Override]]:
    """The ``--set`` items that name a sweep parameter of the file (``model.solver=sgd`` with
    ``model.solver`` swept): they pin it for this run. Returns (pins, the other items)."""
    sweep = raw.get(SWEEP_KEY)
    names = {str(k) for k in sweep} if isinstance(sweep, dict) else set()
    pins = [o for o in overrides if o.path[0] != SWEEP_KEY and ".".join(o.path) in names]
    return pins, [o for o in overrides if o not in pins]


def apply_pins(
    raw: dict[str, Any], pins: list[Override], check: Checker
) -> tuple[dict[str, Any], list[str]]:
    """Fix each pinned sweep parameter: out of ``sweep_parameters`` (and the ``enqueue``
    entries), its value at its dotted path among the fixed values, so every trial's config
    has it. A parameter whose condition names a pinned one keeps the condition's other parts
    when the pinned value meets it, and leaves the space when it does not (it would never be
    sampled). Returns the new mapping and one note per change."""
    if not pins:
        return raw, []
    out = copy.deepcopy(raw)
    sweep = out.get(SWEEP_KEY)
    notes = []
    pinned: dict[str, Any] = {}
    for item in pins:
        name = ".".join(item.path)
        if isinstance(sweep, dict):
            sweep.pop(name, None)
        pinned[name] = item.value
        node = out
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or node[part] is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise check.fail(
                    name, f"{'.'.join(parts[: i + 1])} is a fixed value ({node[part]!r}), not a mapping, so "
                    f"sweep parameter {name} cannot be pinned inside it",
                )
            node = node[part]
        node[parts[-1]] = copy.deepcopy(item.value)
        notes.append(
            f"--set {item.text}: pins sweep parameter {name} to {item.value!r} for this run "
            "(not searched; every trial's config has this value)"
        )
    if isinstance(sweep, dict):
        changed = True
        while changed:  # dropping one parameter can leave another's condition unmet
            changed = False
            for other, spec in list(sweep.items()):
                when = spec.get("when") if isinstance(spec, dict) else None
                if not isinstance(when, dict):
                    continue
                kept = {}
                met = True
                for cond, accepted in when.items():
                    cond = str(cond)
                    if cond in pinned:
                        values = accepted if isinstance(accepted, list) else [accepted]
                        met = met and among(pinned[cond], tuple(values))
                    else:
                        kept[cond] = accepted
                if not met:
                    del sweep[other]
                    pinned[str(other)] = _DROPPED
                    notes.append(
                        f"sweep parameter {other} is not searched in this run: its condition "
                        f"({', '.join(f'{c}={v!r}' for c, v in when.items())}) is false for the pinned value(s)"
                    )
                    changed = True
                elif len(kept) != len(when):
                    if kept:
                        spec["when"] = kept
                    else:
                        del spec["when"]
    if isinstance(out.get("enqueue"), list):
        entries = [_without(entry, set(pinned)) for entry in out["enqueue"]]
        out["enqueue"] = [e for e in entries if e != {}] or None
    return out, notes


def _without(entry: Any, names: set[str], prefix: str = "") -> Any:
    """An ``enqueue`` entry without the pinned names (dotted keys or nested mappings)."""
    if not isinstance(entry, dict):
        return entry
    out = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if name in names:
            continue
        if isinstance(value, dict) and any(n.startswith(name + ".") for n in names):
            value = _without(value, names, name + ".")
            if value == {}:
                continue
        out[key] = value
    return out

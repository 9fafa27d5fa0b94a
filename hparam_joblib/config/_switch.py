"""Switching the sampler or pruner with ``--set``: the old type's settings go with it.

``--set pruner.type=none`` on a file with ``pruner: {type: median, n_startup_trials: 5}`` means
"no pruner", not "a none pruner with n_startup_trials" (which no Optuna class takes). So when a
``--set`` item changes a block's type, the settings the *file* gave that the new type does not
take are dropped, each named in one note; a setting a ``--set`` item gave is kept (and checked:
a setting given for the wrong type is still an error). ``sampler: tpe`` / ``pruner: null`` in the
file are read as ``{type: tpe}`` / ``{}`` when a ``--set`` item reaches inside them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hparam_joblib.config import _algorithms
from hparam_joblib.config._overrides import Override

#: The blocks, and the type each has when the file does not say.
BLOCKS: dict[str, str] = {"sampler": "tpe", "pruner": "none"}


def open_blocks(raw: Mapping[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """``raw`` with each block that a ``--set`` item reaches inside (``pruner.type=...``) as a
    mapping: ``pruner: median`` becomes ``{type: median}``, an absent or null block ``{}``."""
    out = dict(raw)
    for kind in BLOCKS:
        if not any(len(o.path) > 1 and o.path[0] == kind for o in overrides):
            continue
        block = out.get(kind)
        if block is None:
            out[kind] = {}
        elif isinstance(block, str):
            out[kind] = {"type": block}
    return out


def drop_old_settings(
    raw: Mapping[str, Any], resolved: dict[str, Any], overrides: list[Override]
) -> tuple[dict[str, Any], list[str]]:
    """After the overrides: drop the file's settings that a block's new type does not take.

    Args:
        raw: the file's mapping (before the overrides).
        resolved: the mapping after the overrides.
        overrides: the ``--set`` items.

    Returns:
        The mapping without those settings, and one note per block that lost some.
    """
    out = resolved
    notes = []
    for kind, default in BLOCKS.items():
        before, after = _type_of(raw.get(kind), default), _type_of(resolved.get(kind), default)
        block = resolved.get(kind)
        if before == after or after is None or not isinstance(block, dict):
            continue
        if any(o.path == (kind,) for o in overrides):
            continue  # the whole block came from --set: every setting in it was given
        table = _algorithms.SAMPLERS if kind == "sampler" else _algorithms.PRUNERS
        if after not in table:
            continue  # an unknown type: validation says so
        takes = set(_algorithms.options_of(kind, after)) | set(_algorithms.MANAGED)
        given = {o.path[1] for o in overrides if len(o.path) > 1 and o.path[0] == kind}
        dropped = [k for k in block if k != "type" and k not in given and k not in takes]
        if not dropped:
            continue
        if out is resolved:
            out = copy.copy(resolved)
        out[kind] = {k: v for k, v in block.items() if k not in dropped}
        notes.append(
            f"--set {kind}.type={after}: dropped {', '.join(f'{kind}.{k}' for k in dropped)} "
            f"(settings of the {before} {kind} that the {after} {kind} does not take)"
        )
    return out, notes


def _type_of(block: Any, default: str) -> str | None:
    """The type a block names, lower-case (``default`` when it names none); None: not a type."""
    if block is None:
        return default
    if isinstance(block, str):
        return block.strip().lower()
    if isinstance(block, dict):
        kind = block.get("type", default)
        return kind.strip().lower() if isinstance(kind, str) else None
    return None

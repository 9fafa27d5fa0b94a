"""The ``when:`` condition graph: each condition names a parameter that can take the values it
lists, and the parameters are ordered so that each is sampled after those its condition names."""

from __future__ import annotations

from hparam_joblib.config._checker import Checker
from hparam_joblib.config._schema import ParamSpec


def check_conditions(params: tuple[ParamSpec, ...], check: Checker) -> tuple[ParamSpec, ...]:
    """Check each condition against the parameter it names; return the parameters ordered so
    that every parameter comes after those its condition names (declaration order otherwise)."""
    by_name = {p.name: p for p in params}
    for p in params:
        for other, values in p.when:
            where = f"sweep_parameters.{p.name}.when.{other}"
            target = by_name.get(other)
            if target is None:
                raise check.fail(
                    where, f"names no sweep parameter; sweep parameters: {', '.join(by_name)}"
                )
            if target.type == "float":
                raise check.fail(where, f"{other} is a float parameter; conditions can name only categorical or int parameters")
            for value in values:
                if not target.contains(value):
                    allowed = (
                        f"choices {list(target.choices)}" if target.type == "categorical"
                        else target.describe()
                    )
                    raise check.fail(where, f"{value!r} is not a value {other} can take ({allowed})")
    ordered: list[ParamSpec] = []
    placed: set[str] = set()
    remaining = list(params)
    while remaining:
        ready = next((p for p in remaining if all(o in placed for o, _ in p.when)), None)
        if ready is None:
            cycle = _find_cycle(remaining)
            raise check.fail(
                f"sweep_parameters.{cycle[0]}.when", f"conditions form a cycle: {' -> '.join(cycle)}"
            )
        ordered.append(ready)
        placed.add(ready.name)
        remaining.remove(ready)
    return tuple(ordered)


def _find_cycle(params: list[ParamSpec]) -> list[str]:
    """A cycle among parameters that could not be ordered (each names an unplaced one)."""
    deps = {p.name: [o for o, _ in p.when if o in {q.name for q in params}] for p in params}
    path = [params[0].name]
    while True:
        nxt = deps[path[-1]][0]
        if nxt in path:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)

"""The one YAML loader: PyYAML's safe loader, plus YAML 1.2 floats such as ``1e-3``.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; ML configs are full of them.
Only the safe loader is ever used: ``!!python/object`` tags are rejected, nothing runs.
A key repeated in one mapping is an error (PyYAML would silently keep the last one).
"""

from __future__ import annotations

import re
from typing import Any, cast

import yaml


class _Loader(yaml.SafeLoader):
    """Safe loader that also reads ``1e-3`` and ``1E+5`` as floats and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark,
                    )
                seen.add(key)
        # Not a mapping: the base class reports it (the cast only names the type it checks).
        return super().construct_mapping(cast(yaml.MappingNode, node), deep=deep)


_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with the safe loader; raises ``yaml.YAMLError`` on bad input."""
    return yaml.load(text, Loader=_Loader)


def dump_yaml(data: Any) -> str:
    """Dump data as block-style YAML, keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)

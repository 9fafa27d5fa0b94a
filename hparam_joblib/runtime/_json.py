"""JSON coercion for what the study stores (configs, search spaces, enqueue entries)."""

from __future__ import annotations

import json
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as JSON sees it: tuples become lists, anything unknown its ``str``."""
    return json.loads(json.dumps(value, default=str))

"""Strict JSON values: NaN and Infinity spelled as strings, the one rule for the CLI and jsonb columns."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def finite(value: Any, leaf: Callable[[Any], Any] | None = None) -> Any:
    """`value` with every NaN/Infinity float as "NaN", "Infinity" or "-Infinity"; `leaf` maps other leaves.

    Bare NaN/Infinity are not JSON: PostgreSQL's jsonb, jq and JSON.parse all reject them.
    Dicts keep their keys as strings, tuples become lists.
    """
    if isinstance(value, dict):
        return {str(k): finite(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, leaf) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value if leaf is None else leaf(value)

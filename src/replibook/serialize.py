"""`to_jsonable`: turn the values chapters record into plain JSON types."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def to_jsonable(value: Any) -> Any:
    """Nested dicts/lists/tuples with numpy or torch scalars and arrays, paths and other
    objects -> JSON types. Non-finite floats become None (JSON has no NaN); anything
    unknown becomes its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):   # numpy arrays/scalars, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)

# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Typed fields of the JSON files we read back (a map's manifest and places, an export's
model.json): a value of the wrong type is a ValueError that names the field, never a traceback
further on. ``bool`` is not a number here, whatever Python says."""
from __future__ import annotations

import math

__all__ = ["field", "numbers"]


def field(data: dict, name: str, kind, optional: bool = False):
    """``data[name]`` checked against ``kind`` (a type or tuple of types); ValueError naming
    the field otherwise."""
    if name not in data:
        if optional:
            return None
        raise ValueError(f"field {name!r} is missing")
    value = data[name]
    if value is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"field {name!r} is {value!r}, not {names}")
    return value


def numbers(data: dict, name: str, count: int, optional: bool = True, kind=(int, float)) -> tuple | None:
    """``data[name]`` as a tuple of ``count`` finite numbers of ``kind``."""
    value = field(data, name, list, optional)
    if value is None:
        return None
    if len(value) != count or any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
        raise ValueError(f"field {name!r} is {value!r}, not {count} numbers")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"field {name!r} is {value!r}: not finite")
    return tuple(value)

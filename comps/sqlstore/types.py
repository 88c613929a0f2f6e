"""Field types of request bodies whose values go into PostgreSQL, refused up front (a 400 naming the field)
where PostgreSQL would refuse them later (a 500): text with NUL characters (``text`` and ``jsonb`` cannot hold
U+0000), integers beyond a 4-byte column (in JSON: beyond 64 bits, which the encoder refuses), and timestamps
given as numbers (a date is an ISO 8601 string)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

INT4_MAX = 2**31 - 1


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters (\\u0000)")
    return value


def _json_without_nul(value: Any) -> Any:
    if value is None:
        return value
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # what orjson (and so the store) cannot encode: integers beyond 64 bits
        raise PydanticCustomError("json_type", "must not hold integers beyond 64 bits") from None
    if b"\\u0000" in encoded:
        raise PydanticCustomError("nul_character", "must not contain NUL characters (\\u0000)")
    if _has_huge_float(value):  # jsonb keeps 1e300 as a number it writes back as a 301-digit integer
        raise PydanticCustomError("json_type", "must not hold integers beyond 64 bits (nor numbers that large)")
    return value


def _has_huge_float(value: Any) -> bool:
    if isinstance(value, float):
        return abs(value) >= 2.0**63
    if isinstance(value, dict):
        return any(_has_huge_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_float(v) for v in value)
    return False


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float):  # pydantic would read a number as seconds since 1970
        raise PydanticCustomError("datetime_type", "must be an ISO 8601 date-time string")
    return value


StoredText = Annotated[str, AfterValidator(_no_nul)]
NoNulJSON = AfterValidator(_json_without_nul)  # Annotated[list[dict[str, Any]], NoNulJSON]: keys and values
Int4 = Annotated[int, Field(le=INT4_MAX, ge=-INT4_MAX - 1)]
Timestamp = Annotated[datetime, BeforeValidator(_not_a_number)]

"""What a collection may be called (the one rule) and which stores there are: light enough for the gateway to
import (no Redis, no numpy)."""

from __future__ import annotations

import re
from typing import Literal

from comps.core.errors import BadRequest

Backend = Literal["redis", "pgvector"]
BACKENDS: tuple[Backend, ...] = ("redis", "pgvector")

COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_collection(name: str, *, param: str = "collection") -> str:
    if not COLLECTION_RE.match(name or ""):
        raise BadRequest(
            f"collection name {name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            param=param,
        )
    return name

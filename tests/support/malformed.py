"""Malformed requests generated from a service's OpenAPI document: a small, bounded, deterministic fuzzer.

`cases(openapi, path, valid)` gives the bad requests for one ``POST`` endpoint, starting from one valid
body (``valid``): broken bodies (invalid JSON, empty, wrong content type, wrong top-level type, 10k-deep
nesting, non-UTF-8 bytes, NaN/Infinity literals), then for every field the schema declares (nested objects
and the first item of arrays of objects included): each required field missing, values of every JSON
type the field does not accept, and the edge values of each type it does accept (2 MB strings, lone
surrogates, NUL, RTL text, emoji, zero/negative/huge numbers, NaN, Infinity, empty and 20k-item arrays).

Each case says whether no service could accept it (``must_fail``: a 4xx is required): broken bodies, missing
required fields, wrong types (but ``true`` for a number, which pydantic's lax mode reads as 1), lone
surrogates and NaN/Infinity. The other cases (a 2 MiB string, an empty list...) may be valid: they must
only not get a 500 or hang.

Bodies are serialized with ``json.dumps(..., allow_nan=True)``: NaN and Infinity go out as the bare
literals Python's parser accepts, and lone surrogates as ``\\ud800`` escapes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

JSON = "application/json"
HUGE_STRING = "a" * (2 * 1024 * 1024)  # 2 MiB
DEEP = 10_000  # nesting levels of the "deep" bodies
MAX_DEPTH = 3  # how deep into nested objects the per-field cases go

# One value of each JSON type, for "wrong type" cases; a field gets those of the types it does not accept.
SAMPLES: dict[str, Any] = {
    "string": "not-a-number",
    "integer": 7,
    "number": 2.5,
    "boolean": True,
    "null": None,
    "array": ["x", 1],
    "object": {"x": 1},
}

STRING_EDGES: dict[str, str] = {
    "empty": "",
    "blank": " \t\n ",
    "2 MiB": HUGE_STRING,
    "NUL": "a\x00b",
    "lone high surrogate": "a\ud800b",
    "lone low surrogate": "\udfff",
    "RTL override and Hebrew": "\u202eabc \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "emoji ZWJ sequence": "\U0001f469\u200d\U0001f469\u200d\U0001f467 \U0001f3f3\ufe0f\u200d\U0001f308",
    "combining marks": "e\u0301" * 500,
    "control characters": "\x01\x02\x1b[31m\x7f\u2028\u2029",
    "BOM and noncharacters": "\ufeff\ufffe\uffff",
}
INT_EDGES: dict[str, Any] = {
    "zero": 0,
    "negative": -1,
    "2**31": 2**31,
    "2**63": 2**63,
    "10**30": 10**30,
    "-10**30": -(10**30),
    "fraction": 1.5,
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}
NUMBER_EDGES: dict[str, Any] = {
    "zero": 0.0,
    "negative": -1.0,
    "1e308": 1e308,
    "-1e308": -1e308,
    "denormal": 5e-324,
    "10**30 (int)": 10**30,
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
}


@dataclass(frozen=True)
class Case:
    """One malformed request: its body bytes, Content-Type (None: no header), and whether no service could
    accept it (``must_fail``: a 4xx is required, not only "not a 500")."""

    name: str
    body: bytes
    must_fail: bool = True
    content_type: str | None = JSON

    def __repr__(self) -> str:  # short, for assertion messages
        return f"Case({self.name!r}, {len(self.body)} bytes, {self.content_type})"


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("ascii")


def request_schema(openapi: dict[str, Any], path: str) -> dict[str, Any]:
    """The JSON schema of ``POST path``'s request body, references resolved at the top."""
    body = openapi["paths"][path]["post"]["requestBody"]["content"][JSON]["schema"]
    return resolve(openapi, body)


def post_paths(openapi: dict[str, Any]) -> list[str]:
    """Every path with a POST operation that takes a JSON body."""
    return sorted(
        path
        for path, ops in openapi.get("paths", {}).items()
        if JSON in ops.get("post", {}).get("requestBody", {}).get("content", {})
    )


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = openapi
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def variants(openapi: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of an ``anyOf``/``oneOf`` (or the schema itself), resolved."""
    schema = resolve(openapi, schema)
    alts = schema.get("anyOf") or schema.get("oneOf")
    if not alts:
        return [schema]
    return [v for alt in alts for v in variants(openapi, alt)]


def accepted_types(openapi: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """JSON types a value of ``schema`` may have; every type when the schema says nothing (``Any``)."""
    types: set[str] = set()
    for v in variants(openapi, schema):
        if "type" in v:
            t = v["type"]
            types.update(t if isinstance(t, list) else [t])
        elif "const" in v or "enum" in v:
            types.update(_json_type(x) for x in (v.get("enum") or [v.get("const")]))
        elif "properties" in v:
            types.add("object")
        else:
            return set(SAMPLES)
    return types


def _json_type(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int):
        return "integer"
    if isinstance(x, float):
        return "number"
    if isinstance(x, str):
        return "string"
    return "array" if isinstance(x, list) else "object"


def _set(body: Any, where: tuple[str | int, ...], value: Any) -> Any:
    out = copy.deepcopy(body)
    node = out
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    return out


def _delete(body: Any, where: tuple[str | int, ...]) -> Any:
    out = copy.deepcopy(body)
    node = out
    for key in where[:-1]:
        node = node[key]
    del node[where[-1]]
    return out


def _label(where: tuple[str | int, ...]) -> str:
    return ".".join(str(k) for k in where)


def body_cases(valid: dict[str, Any]) -> Iterator[Case]:
    """Bodies broken as a whole, whatever the schema."""
    good = dumps(valid)
    yield Case("invalid JSON (truncated)", good[: len(good) // 2])
    yield Case("invalid JSON (trailing garbage)", good + b" }{")
    yield Case("invalid JSON (single quotes)", good.replace(b'"', b"'"))
    yield Case("empty body", b"")
    yield Case("whitespace body", b"  \n ")
    yield Case("valid JSON as text/plain", good, content_type="text/plain")
    yield Case("valid JSON as form data", good, content_type="application/x-www-form-urlencoded")
    yield Case("valid JSON as multipart without boundary", good, content_type="multipart/form-data")
    yield Case("valid JSON without a content type", good, content_type=None)
    yield Case("valid JSON as octet-stream", good, content_type="application/octet-stream")
    yield Case("JSON content type with parameters", good, False, "application/json; charset=utf-8; x=1")
    for name, value in {"list": [valid], "string": "hello", "number": 42, "null": None, "true": True}.items():
        yield Case(f"top-level {name}", dumps(value))
    yield Case("top-level NaN", b"NaN")
    yield Case("deep list nesting", b"[" * DEEP + b"]" * DEEP)
    yield Case("deep list nesting (just under the parser's limit)", b"[" * 960 + b"]" * 960)
    yield Case("deep object nesting", b'{"a":' * DEEP + b"1" + b"}" * DEEP)
    yield Case("non-UTF-8 bytes", b"\xff\xfe\xfa" + good + b"\xc3\x28")
    yield Case("invalid UTF-8 inside a string", good.replace(b'"', b'"\xc3\x28', 1))
    yield Case("UTF-16 body", json.dumps(valid).encode("utf-16"), must_fail=False)  # Python's parser reads it
    yield Case("UTF-8 BOM", b"\xef\xbb\xbf" + good, must_fail=False)
    yield Case("duplicate keys", good[:-1] + b", " + good[1:], must_fail=False)


def field_cases(openapi: dict[str, Any], schema: dict[str, Any], valid: Any, where: tuple = ()) -> Iterator[Case]:
    """Per-field cases for every property of the object ``schema`` at ``where`` in ``valid``."""
    node = valid
    for key in where:
        node = node[key]
    objects = [v for v in variants(openapi, schema) if "properties" in v]
    if not objects or not isinstance(node, dict):
        return
    obj = objects[0]
    required = set(obj.get("required", ()))
    at_label = _label(where) or "body"
    yield Case(f"{at_label}: empty object", dumps(_set(valid, where, {}) if where else {}), must_fail=bool(required))
    yield Case(f"{at_label}: unknown field", dumps(_set(valid, (*where, "zz_unknown"), 1)), must_fail=False)
    yield Case(f"{at_label}: unknown field named with a lone surrogate", dumps(_set(valid, (*where, "zz\ud800"), 1)))
    for name, prop in obj["properties"].items():
        at = (*where, name)
        label = _label(at)
        if name in required:
            yield Case(f"{label}: missing", dumps(_delete(valid, at)))
        types = accepted_types(openapi, prop)
        for type_, sample in SAMPLES.items():
            if type_ not in types and not (type_ == "integer" and "number" in types):  # 7 is a number too
                yield Case(f"{label}: wrong type {type_}", dumps(_set(valid, at, sample)), _must_fail(type_, types))
        yield from value_cases(openapi, prop, valid, at, types)


def value_cases(
    openapi: dict[str, Any], prop: dict[str, Any], valid: Any, at: tuple, types: set[str]
) -> Iterator[Case]:
    """Edge values of each type the field at ``at`` accepts (and, for objects, the fields inside)."""
    label = _label(at)
    alts = variants(openapi, prop)
    if "string" in types:
        for what, s in STRING_EDGES.items():
            yield Case(f"{label}: string {what}", dumps(_set(valid, at, s)), _never_valid(what))
        if any("enum" in v or "const" in v for v in alts):
            yield Case(f"{label}: not one of the choices", dumps(_set(valid, at, "no-such-choice")))
    if "integer" in types:
        for what, n in INT_EDGES.items():
            fails = _never_valid(what) or (what == "fraction" and "number" not in types)
            yield Case(f"{label}: integer {what}", dumps(_set(valid, at, n)), fails)
    elif "number" in types:
        for what, n in NUMBER_EDGES.items():
            yield Case(f"{label}: number {what}", dumps(_set(valid, at, n)), _never_valid(what))
    if "boolean" in types:
        yield Case(f"{label}: boolean as string", dumps(_set(valid, at, "false")), must_fail=False)  # lax: False
    if "array" in types:
        items = next((v.get("items", {}) for v in alts if v.get("type") == "array"), {})
        item_types = accepted_types(openapi, items)
        current = _current(valid, at)
        first = current[0] if isinstance(current, list) and current else SAMPLES[sorted(item_types)[0]]
        yield Case(f"{label}: empty array", dumps(_set(valid, at, [])), must_fail=False)
        yield Case(f"{label}: 20k items", dumps(_set(valid, at, [first] * 20_000)), must_fail=False)
        yield Case(f"{label}: 500-deep nested array", dumps(_set(valid, at, _nested(500))), must_fail=False)
        for type_, sample in SAMPLES.items():
            if type_ not in item_types and not (type_ == "integer" and "number" in item_types):
                bad = _must_fail(type_, item_types)
                yield Case(f"{label}[0]: wrong type {type_}", dumps(_set(valid, at, [sample])), bad)
        if "string" in item_types:
            for what in ("empty", "2 MiB", "NUL", "lone high surrogate", "emoji ZWJ sequence"):
                body = dumps(_set(valid, at, [STRING_EDGES[what]]))
                yield Case(f"{label}[0]: string {what}", body, _never_valid(what))
        if "number" in item_types or "integer" in item_types:
            for what in ("NaN", "Infinity", "1e308", "zero"):
                value = NUMBER_EDGES.get(what, 0)
                values = [value] * (len(current) if isinstance(current, list) and current else 1)
                yield Case(f"{label}[0]: number {what}", dumps(_set(valid, at, values)), _never_valid(what))
        if len(at) < MAX_DEPTH and isinstance(current, list) and current and isinstance(current[0], dict):
            item_schema = next((v.get("items", {}) for v in alts if v.get("type") == "array"), {})
            yield from field_cases(openapi, item_schema, valid, (*at, 0))
    if "object" in types and len(at) < MAX_DEPTH:
        current = _current(valid, at)
        mapping = next((v for v in alts if isinstance(v.get("additionalProperties"), dict)), None)
        if isinstance(current, dict) and mapping is not None:  # a dict[str, X]: the values given, one by one
            body = dumps(_set(valid, at, {**current, "zz-no-such-key": "x"}))
            yield Case(f"{label}: key not allowed", body, must_fail="propertyNames" in mapping)
            for key in current:
                values = mapping["additionalProperties"]
                yield from value_cases(openapi, values, valid, (*at, key), accepted_types(openapi, values))
        elif isinstance(current, dict):
            yield from field_cases(openapi, prop, valid, at)
        else:
            yield Case(f"{label}: deep object", dumps(_set(valid, at, _nested_obj(500))), must_fail=False)


def _never_valid(edge: str) -> bool:
    """Edge values no JSON API can take: lone surrogates (not Unicode) and NaN/Infinity (not JSON)."""
    return "surrogate" in edge or "NaN" in edge or "Infinity" in edge


def _must_fail(wrong: str, accepted: set[str]) -> bool:
    """A value of a type the field does not accept must be refused; but pydantic's lax mode reads
    ``true`` as 1 for a number, which is lenient, not wrong."""
    return not (wrong == "boolean" and accepted & {"integer", "number"})


def _current(valid: Any, at: tuple) -> Any:
    node = valid
    for key in at:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return node


def _nested(depth: int) -> list:
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def _nested_obj(depth: int) -> dict:
    out: dict = {}
    for _ in range(depth):
        out = {"a": out}
    return out


MULTIPART_BOUNDARY = "fuzzboundary"


def multipart_cases(boundary: str = MULTIPART_BOUNDARY) -> list[Case]:
    """Broken ``multipart/form-data`` bodies (for hand-parsed uploads): none can be valid (``must_fail``).

    Among them the one a schemathesis run found a 500 with: a body whose only part has no headers."""
    b = boundary.encode()
    ctype = f"multipart/form-data; boundary={boundary}"
    end = b"--" + b + b"--\r\n"
    disp = b'Content-Disposition: form-data; name="files"; filename="a.txt"'
    bodies = {
        "only part has no headers": b"--" + b + b"\r\n\r\nhello\r\n" + end,
        "part without headers or blank line": b"--" + b + b"\r\nhello\r\n" + end,
        "header line without a colon": b"--" + b + b"\r\nContent-Disposition\r\n\r\nx\r\n" + end,
        "not multipart at all": b"garbage",
        "no closing boundary": b"--" + b + b"\r\n" + disp + b"\r\n\r\nhello",
        "empty body": b"",
        "part without a name": b"--" + b + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n" + end,
        "file in another field": b"--"
        + b
        + b'\r\nContent-Disposition: form-data; name="x"; filename="a.txt"\r\n\r\nx\r\n'
        + end,
        "unsupported file type": b"--"
        + b
        + b'\r\nContent-Disposition: form-data; name="files"; filename="a.exe"\r\n\r\nx\r\n'
        + end,
        "empty file": b"--" + b + b"\r\n" + disp + b"\r\n\r\n\r\n" + end,
        "nothing to ingest": end,
        "bad chunk_size": b"--" + b + b'\r\nContent-Disposition: form-data; name="chunk_size"\r\n\r\n-5\r\n' + end,
        "bad link_list": b"--" + b + b'\r\nContent-Disposition: form-data; name="link_list"\r\n\r\n[1, \r\n' + end,
        "NUL in header": b"--" + b + b'\r\nContent-Disposition: form-data; name="a\x00"\r\n\r\nx\r\n' + end,
    }
    found = [Case(f"multipart: {name}", body, content_type=ctype, must_fail=True) for name, body in bodies.items()]
    found.append(Case("multipart without a boundary", bodies["only part has no headers"],
                      content_type="multipart/form-data", must_fail=True))  # fmt: skip
    return found


def cases(openapi: dict[str, Any], path: str, valid: dict[str, Any]) -> list[Case]:
    """Every malformed request for ``POST path``, deterministic and bounded (a few hundred at most)."""
    schema = request_schema(openapi, path)
    out = list(body_cases(valid))
    out += list(field_cases(openapi, schema, valid))
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "case names must be unique"
    return out

"""One error envelope for every non-2xx answer, and the small exception tree behind it.

Every service raises these; `install_error_handlers` maps them (and FastAPI's own errors) once,
at the boundary, to ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("comps.errors")


class ServiceError(Exception):
    """Base of every error a service answers with."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)


class BadRequest(ServiceError):
    """The request is malformed or asks for something impossible."""

    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(ServiceError):
    """No credentials, or credentials that are not valid (malformed, expired, wrongly signed, revoked)."""

    status_code = 401
    error_type = "authentication_error"

    def __init__(self, message: str, *, code: str | None = "invalid_credentials", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="chatqna"'})
        super().__init__(message, code=code, **kw)


class Forbidden(ServiceError):
    """Authenticated, but not allowed to do this."""

    status_code = 403
    error_type = "permission_error"


class NotFound(ServiceError):
    """The thing asked for does not exist."""

    status_code = 404
    error_type = "not_found_error"


class PayloadTooLarge(ServiceError):
    """The request body or an uploaded file is over the configured limit."""

    status_code = 413
    error_type = "invalid_request_error"


class UnsupportedMediaType(ServiceError):
    """The uploaded content is of a type this service cannot read."""

    status_code = 415
    error_type = "invalid_request_error"


class Overloaded(ServiceError):
    """The service's queue is full; retry after the given number of seconds."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = "queue_full") -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})


class NotReady(ServiceError):
    """The service or one of its dependencies is not ready yet."""

    status_code = 503
    error_type = "service_unavailable"


class UpstreamError(ServiceError):
    """A service this one called failed or answered with an error."""

    status_code = 502
    error_type = "upstream_error"

    def __init__(self, message: str, *, node: str | None = None, status: int | None = None, **kw: Any) -> None:
        kw.setdefault("code", node)
        super().__init__(message, **kw)
        self.node = node
        self.upstream_status = status


class UpstreamUnavailable(UpstreamError):
    """A service this one needs cannot be reached, or says it is not ready."""

    status_code = 503
    error_type = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """A service this one called did not answer in time."""

    status_code = 504
    error_type = "upstream_timeout"


class ConfigError(Exception):
    """Invalid configuration, found at start-up; the message names the variable."""


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    """Every non-2xx answer's body."""

    error: ErrorDetail


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the services answer: any 4xx or 5xx of any operation is the error envelope
    (FastAPI's own 422 and its validation schemas go: the kit answers invalid input with a 400)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(envelope.pop("$defs", {}))
    components[ErrorEnvelope.__name__] = envelope
    body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ErrorEnvelope.__name__}"}}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                responses = operation["responses"]
                responses.pop("422", None)
                responses.setdefault("4XX", {"description": "Refused; the envelope says why.", **body})
                responses.setdefault("5XX", {"description": "Failed or unavailable; the envelope says why.", **body})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def error_envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _validation_answer(exc: RequestValidationError) -> tuple[int, str, str | None]:
    """Status, message and param for a validation error; the body as a whole gets a message of its own."""
    errors = exc.errors()
    if not errors:
        return 400, "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    if loc == ["body"]:
        value = first.get("input")
        if first.get("type") == "missing":
            return 400, "request body is required: a JSON object (Content-Type: application/json)", None
        if isinstance(value, (bytes, bytearray)):  # FastAPI reads JSON only when the Content-Type says so
            return 415, "request body must be JSON sent with Content-Type: application/json", None
        if first.get("type") == "model_attributes_type":
            return 400, f"request body must be a JSON object, not {_JSON_KINDS.get(type(value), 'null')}", None
    if loc and loc[0] in ("body", "query", "path", "header"):  # where it was, not a field name
        loc = loc[1:]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return 400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return 400, (f"{param}: {msg}" if param else msg) + more, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc.message)
        return _json(exc.status_code, exc.envelope(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, param = _validation_answer(exc)
        return _json(status, error_envelope(message, "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        if exc.status_code >= 500:
            type_ = "internal_error"
        message = str(exc.detail)
        if isinstance(exc.__cause__, ServiceError):  # raised while FastAPI read the body (e.g. over the limit)
            return _json(exc.__cause__.status_code, exc.__cause__.envelope(), exc.__cause__.headers)
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # FastAPI's "error parsing"
            message = "request body is not valid JSON: nested too deeply"
        elif exc.status_code == 400 and isinstance(exc.__cause__, ValueError):  # e.g. bytes that are not UTF-8
            message = f"request body is not valid JSON: {exc.__cause__}"
        return _json(exc.status_code, error_envelope(message, type_), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:  # errors of the middlewares themselves
        log.error("unhandled error: %s", exc, exc_info=exc)
        return _json(500, error_envelope("internal server error", "internal_error"))

    app.add_middleware(UnhandledErrors)  # the first added is the innermost: it sees route errors first


class UnhandledErrors:
    """Answers an unexpected exception of a route with the 500 envelope, and keeps the connection.

    Starlette's own catch-all (the ``Exception`` handler above) re-raises after answering, and uvicorn then
    closes the keep-alive connection without ``Connection: close``: the client's NEXT request on that
    connection, an innocent one, fails with "connection reset". An exception after the answer started (a
    broken stream) still propagates: the connection must close then."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error: %s", exc)
            await _json(500, error_envelope("internal server error", "internal_error"))(scope, receive, send)

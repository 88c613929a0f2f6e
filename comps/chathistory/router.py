"""HTTP routes of chathistory: OPEA's ``/v1/chathistory/*`` and ``/v1/feedback/*``, and the REST shape
``/v1/conversations``. The logic lives in `service.py`; the owner comes from the gateway's identity headers."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from comps.chathistory.protocol import (
    Append,
    Appended,
    Context,
    ConversationCreate,
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    Export,
    ExportedConversation,
    FeedbackIn,
    FeedbackOut,
    FeedbackReportPage,
    Imported,
    MessageIn,
    MessagePage,
    OpeaCreate,
    OpeaDelete,
    OpeaFeedbackCreate,
    OpeaFeedbackDelete,
    OpeaFeedbackGet,
    OpeaGet,
    SessionCounts,
)
from comps.chathistory.service import ChatHistory, title_of
from comps.chathistory.settings import ChatHistorySettings
from comps.core.app import create_app, ready_backend
from comps.core.caller import Caller, caller_of
from comps.core.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized
from comps.core.http import HttpClient
from comps.sqlstore.db import StoreBackend

log = logging.getLogger("comps.chathistory")

NDJSON = "application/x-ndjson"


class Store(StoreBackend):
    """The service's backend: the relational store, migrated at warm-up."""

    what = "the conversation store (PostgreSQL)"

    def __init__(self, settings: ChatHistorySettings) -> None:
        super().__init__(settings.database_url, pool_size=settings.pool_size, migrate=settings.migrate)
        self.settings = settings
        self.service: ChatHistory | None = None

    async def warm_up(self, http: HttpClient) -> None:
        db = await self.open_store()
        self.service = ChatHistory(
            db,
            max_context_messages=self.settings.max_context_messages,
            async_commit=self.settings.async_commit,
            pool_size=self.settings.pool_size,
            turn_wait_s=self.settings.turn_wait_s,
        )
        await self.service.pg()

    async def close(self) -> None:
        if self.service is not None:
            await self.service.close()
        await super().close()


async def _service(request: Request) -> ChatHistory:
    store: Store = await ready_backend(request)  # type: ignore[assignment]
    assert store.service is not None
    return store.service


def _caller(request: Request) -> Caller:
    caller = caller_of(request)
    if caller is None:
        raise Unauthorized("no user named: conversations are reached through the gateway", code="missing_user")
    return caller


async def _user(request: Request) -> uuid.UUID:
    caller = _caller(request)
    try:
        return uuid.UUID(caller.user_id)
    except ValueError:
        raise Unauthorized("the user id the gateway named is not a UUID", code="invalid_user") from None


async def _admin(request: Request) -> Caller:
    caller = _caller(request)
    if not caller.is_admin:
        raise Forbidden("this needs the admin role", code="admin_only")
    return caller


Service = Annotated[ChatHistory, Depends(_service)]
User = Annotated[uuid.UUID, Depends(_user)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=500)]
Format = Annotated[Literal["json", "ndjson"], Query()]
# What an export answers: a JSON array, or one conversation a line.
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The conversations", "content": {"application/json": {}, NDJSON: {}}}
}


def build_router(settings: ChatHistorySettings) -> APIRouter:
    router = APIRouter(tags=["conversations"])
    max_page = settings.max_page

    # -- REST ----------------------------------------------------------------------------------------

    @router.post("/v1/conversations", status_code=201, response_model=ConversationOut)
    async def create(body: ConversationCreate, service: Service, user: User) -> ConversationOut:
        return await service.create(user, body)

    @router.get("/v1/conversations", response_model=ConversationPage)
    async def list_(
        service: Service,
        user: User,
        limit: Limit = 50,
        cursor: Cursor = None,
        q: Annotated[str | None, Query(max_length=200, description="Text in titles and messages")] = None,
        archived: Annotated[bool, Query(description="true: the archived ones instead")] = False,
    ) -> Response:
        """The caller's conversations, newest first."""
        return json_response(
            await service.list_conversations(user, limit=min(limit, max_page), cursor=cursor, q=q, archived=archived)
        )

    @router.get("/v1/conversations/export", responses=EXPORT_RESPONSES)
    async def export_all(service: Service, user: User, format: Format = "json") -> Response:
        """All of the caller's conversations with their messages (JSON, or NDJSON: one conversation a line)."""
        return _export(await service.export(user, None), format)

    @router.post("/v1/conversations/import", status_code=201, response_model=Imported)
    async def import_(request: Request, service: Service, user: User) -> Imported:
        """An export (JSON, or NDJSON with Content-Type application/x-ndjson) as new conversations: all or none."""
        items = _parse_import(await request.body(), request.headers.get("content-type", ""))
        if len(items) > settings.max_import_conversations:
            raise PayloadTooLarge(
                f"an import holds at most {settings.max_import_conversations} conversations, not {len(items)}",
                code="import_too_large",
            )
        return await service.import_(user, items)

    @router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut)
    async def get(conversation_id: str, service: Service, user: User) -> ConversationOut:
        return await service.get(user, conversation_id)

    @router.patch("/v1/conversations/{conversation_id}", response_model=ConversationOut)
    async def patch(conversation_id: str, body: ConversationPatch, service: Service, user: User) -> ConversationOut:
        """Rename, pin or archive."""
        return await service.patch(user, conversation_id, body)

    @router.delete("/v1/conversations/{conversation_id}", status_code=204)
    async def delete(conversation_id: str, service: Service, user: User) -> Response:
        await service.delete(user, conversation_id)
        return Response(status_code=204)

    @router.get("/v1/conversations/{conversation_id}/messages", response_model=MessagePage)
    async def messages(
        conversation_id: str, service: Service, user: User, limit: Limit = 100, cursor: Cursor = None
    ) -> MessagePage:
        """Oldest first, each with its sources, usage, latency and feedback."""
        return await service.messages(user, conversation_id, limit=min(limit, max_page * 5), cursor=cursor)

    @router.post("/v1/conversations/{conversation_id}/messages", status_code=201, response_model=Appended)
    async def append(conversation_id: str, body: Append, service: Service, user: User) -> Appended:
        """Add messages; ``create: true`` makes the conversation of this id first if there is none."""
        return await service.append(
            user, conversation_id, body.messages, create=body.create, title=body.title, turn_id=body.turn_id
        )

    @router.post("/v1/conversations/{conversation_id}/turns/{turn_id}", response_model=Context)
    async def begin_turn(
        conversation_id: str,
        turn_id: uuid.UUID,
        service: Service,
        user: User,
        max_tokens: Annotated[int, Query(ge=1, le=1_000_000)] = 1024,
        lease_s: Annotated[float, Query(gt=0, le=300, description="How long the mark holds unless renewed")] = 10.0,
    ) -> Response:
        """A chat turn begins (the gateway): the context, as ``/context`` answers it, read once no other turn of
        the conversation is in flight (waiting at most the service's ``turn_wait_s``), and this turn marked in
        flight for ``lease_s`` (until its answer is written, or released). No body: the hot path of every turn."""
        return json_response(await service.context(user, conversation_id, max_tokens, turn_id=turn_id, lease_s=lease_s))

    @router.put("/v1/conversations/{conversation_id}/turns/{turn_id}", status_code=204)
    async def mark_turn(
        conversation_id: str,
        turn_id: uuid.UUID,
        service: Service,
        user: User,
        lease_s: Annotated[float, Query(gt=0, le=300)] = 10.0,
    ) -> Response:
        """Mark (or renew) a turn in flight without reading (the conversation may not exist yet: its first turn);
        404 when it is another user's."""
        if not await service.mark(user, conversation_id, turn_id, lease_s):
            raise NotFound(f"no conversation {conversation_id!r}", code="conversation_not_found")
        return Response(status_code=204)

    @router.delete("/v1/conversations/{conversation_id}/turns/{turn_id}", status_code=204)
    async def release_turn(conversation_id: str, turn_id: uuid.UUID, service: Service, user: User) -> Response:
        """A turn that will store nothing (its request failed): the reads waiting for it go on."""
        await service.release(user, turn_id)
        return Response(status_code=204)

    @router.get("/v1/conversations/{conversation_id}/context", response_model=Context)
    async def context(
        conversation_id: str,
        service: Service,
        user: User,
        max_tokens: Annotated[int, Query(ge=1, le=1_000_000)] = 1024,
    ) -> Response:
        """The newest messages that fit ``max_tokens`` (estimated), oldest first: what the gateway sends the LLM."""
        return json_response(await service.context(user, conversation_id, max_tokens))

    @router.get("/v1/conversations/{conversation_id}/export", responses=EXPORT_RESPONSES)
    async def export_one(conversation_id: str, service: Service, user: User, format: Format = "json") -> Response:
        return _export(await service.export(user, conversation_id), format)

    @router.post("/v1/conversations/{conversation_id}/messages/{message_id}/feedback", response_model=FeedbackOut)
    async def feedback(
        conversation_id: str, message_id: str, body: FeedbackIn, service: Service, user: User
    ) -> FeedbackOut:
        """Thumbs up/down, a 1-5 rating and a comment on an answer (again: replaces the earlier one)."""
        return await service.give_feedback(user, conversation_id, message_id, body)

    @router.get("/v1/admin/feedback", response_model=FeedbackReportPage, tags=["admin"])
    async def feedback_report(
        service: Service,
        _: Annotated[Caller, Depends(_admin)],
        limit: Limit = 50,
        cursor: Cursor = None,
        thumbs_up: bool | None = None,
        max_rating: Annotated[int | None, Query(ge=1, le=5)] = None,
    ) -> FeedbackReportPage:
        """Admins: feedback newest first with the question, the answer and its sources."""
        return await service.feedback_report(
            limit=min(limit, max_page), cursor=cursor, thumbs_up=thumbs_up, max_rating=max_rating
        )

    @router.get("/v1/admin/sessions/count", response_model=SessionCounts, tags=["admin"])
    async def session_counts(
        service: Service,
        _: Annotated[Caller, Depends(_admin)],
        active_within_s: Annotated[int, Query(ge=60, le=90 * 86_400)] = 3600,
    ) -> SessionCounts:
        """Admins: conversations (archived ones too), the users who have any, and those active lately (a
        conversation of theirs changed within ``active_within_s``)."""
        return await service.session_counts(active_within_s)

    # -- OPEA's chathistory --------------------------------------------------------------------------

    @router.post("/v1/chathistory/create", tags=["opea"])
    async def opea_create(body: OpeaCreate, service: Service, user: User) -> str:
        """OPEA's body; returns the conversation's id. With ``id``: its messages are replaced."""
        messages = _opea_messages(body.data.messages)
        if body.id:
            await service.replace_messages(user, body.id, messages, body.first_query)
            return body.id
        created = await service.create(user, ConversationCreate(title=_title(body.first_query), messages=messages))
        return created.id

    @router.post("/v1/chathistory/get", tags=["opea"])
    async def opea_get(body: OpeaGet, service: Service, request: Request, user: User) -> Any:
        """Without ``id``: the caller's conversations (newest first); with it, that one with its messages."""
        if body.id is None:
            page = await service.list_conversations(user, limit=max_page, cursor=None, q=None, archived=None)
            return [{"id": c["id"], "first_query": c["title"], "updated_at": c["updated_at"]} for c in page["data"]]
        conv = await service.get(user, body.id)
        msgs = await service.messages(user, body.id, limit=10_000, cursor=None)
        return {
            "id": conv.id,
            "first_query": conv.title,
            "data": {
                "user": _caller(request).username,
                "messages": [{"role": m.role, "content": m.content} for m in msgs.data],
            },
        }

    @router.post("/v1/chathistory/delete", tags=["opea"])
    async def opea_delete(body: OpeaDelete, service: Service, user: User) -> bool:
        await service.delete(user, body.id)
        return True

    # -- OPEA's feedback -----------------------------------------------------------------------------

    @router.post("/v1/feedback/create", tags=["opea"], response_model=FeedbackOut)
    async def opea_feedback_create(body: OpeaFeedbackCreate, service: Service, user: User) -> FeedbackOut:
        data = body.feedback_data
        given = FeedbackIn(thumbs_up=data.is_thumbs_up, rating=data.rating, comment=data.comment)
        return await service.give_feedback(user, body.chat_id, body.message_id, given)

    @router.post("/v1/feedback/get", tags=["opea"], response_model=list[FeedbackOut])
    async def opea_feedback_get(body: OpeaFeedbackGet, service: Service, user: User) -> list[FeedbackOut]:
        return await service.feedback_of(user, conversation_id=body.chat_id, feedback_id=body.feedback_id)

    @router.post("/v1/feedback/delete", tags=["opea"])
    async def opea_feedback_delete(body: OpeaFeedbackDelete, service: Service, user: User) -> bool:
        await service.delete_feedback(user, body.feedback_id)
        return True

    return router


def json_response(values: dict[str, Any]) -> Response:
    """Plain values from trusted rows (the shape of the route's response model), encoded once by orjson:
    datetimes as pydantic writes them (RFC 3339, ``Z``)."""
    return Response(orjson.dumps(values, option=orjson.OPT_UTC_Z), media_type="application/json")


def _title(text: str | None) -> str | None:
    return title_of(text) if text is not None else None


def _opea_messages(raw: str | list[dict[str, Any]]) -> list[MessageIn]:
    if isinstance(raw, str):
        return [MessageIn(role="user", content=raw)] if raw.strip() else []
    out = []
    for n, item in enumerate(raw):
        try:
            content = item.get("content")
            if isinstance(content, list):  # OpenAI content parts: the text ones
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            out.append(MessageIn.model_validate({**item, "content": content if content is not None else ""}))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise BadRequest(
                f"data.messages.{n}.{where}: {err['msg']}", param=f"data.messages.{n}", code="invalid_value"
            ) from None
    return out


def _export(items: list[ExportedConversation], format: str) -> Response:
    if format == "ndjson":
        lines = b"".join(item.__pydantic_serializer__.to_json(item) + b"\n" for item in items)
        return Response(
            lines, media_type=NDJSON, headers={"Content-Disposition": 'attachment; filename="conversations.ndjson"'}
        )
    body = Export(conversations=items)
    return Response(
        body.__pydantic_serializer__.to_json(body),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="conversations.json"'},
    )


def _parse_import(raw: bytes, content_type: str) -> list[ExportedConversation]:
    """The export's JSON (or a bare list of conversations), or NDJSON; any bad line refuses the whole file."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if not raw.strip():
        raise BadRequest("the import is empty: send an export (JSON or NDJSON)", code="invalid_import")
    if mime in (NDJSON, "application/jsonl", "application/ndjson"):
        items = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                items.append(_conversation(_strict(line, f"line {n}"), f"line {n}"))
        return items
    if mime != "application/json":
        raise BadRequest(f"an import is application/json or {NDJSON}, not {mime or 'untyped'}", code="invalid_import")
    data = _strict(raw, "the file")
    if isinstance(data, list):
        return [_conversation(item, f"conversations.{n}") for n, item in enumerate(data)]
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        raise BadRequest('not an export: expected {"conversations": [...]}', code="invalid_import")
    try:
        Export.model_validate({k: v for k, v in data.items() if k != "conversations"} | {"conversations": []})
    except ValidationError as exc:
        raise BadRequest(f"not an export of this version: {exc.errors()[0]['msg']}", code="invalid_import") from None
    return [_conversation(item, f"conversations.{n}") for n, item in enumerate(data["conversations"])]


def _strict(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw)  # RFC 8259: no NaN, no lone surrogates
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{where} is not valid JSON: {exc}", code="invalid_import") from None


def _conversation(item: Any, where: str) -> ExportedConversation:
    try:
        return ExportedConversation.model_validate(item)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"])
        raise BadRequest(f"{where}{'.' + path if path else ''}: {err['msg']}", code="invalid_import") from None


def build_app(settings: ChatHistorySettings) -> FastAPI:
    return create_app(settings, backend=Store(settings), routers=[build_router(settings)], title="chathistory")

"""The logic of chathistory: every call names its owner (the gateway's user), and sees only what is theirs.

A conversation that does not exist and one of another user are the same 404. Writes are one transaction
each (an import too: all of it or nothing).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import orjson
from sqlalchemy import Select, and_, delete, distinct, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comps.chathistory.models import Conversation, Feedback, Message
from comps.chathistory.protocol import (
    TITLE_MAX,
    Appended,
    ConversationCreate,
    ConversationOut,
    ConversationPatch,
    ExportedConversation,
    FeedbackIn,
    FeedbackOut,
    FeedbackReport,
    FeedbackReportPage,
    Imported,
    MessageIn,
    MessageOut,
    MessagePage,
    SessionCounts,
    estimate_tokens,
)
from comps.chathistory.turns import BLOCKED_SQL, MARK_SQL, RELEASE_SQL, TurnWaits
from comps.core.errors import BadRequest, NotFound, ServiceError
from comps.sqlstore import Database
from comps.sqlstore.db import asyncpg_dsn

_Sel = TypeVar("_Sel", bound="Select[*tuple[Any, ...]]")


def newest_first(stmt: _Sel, cursor: str | None, at: Any, key: Any, limit: int) -> _Sel:
    """Keyset paging, newest first: rows after the ``(at, key)`` cursor, one more than ``limit`` (to know if a next
    page exists)."""
    if cursor:
        at_text, key_text = decode_cursor(cursor, 2)
        try:
            at_dt, key_id = datetime.fromisoformat(at_text), uuid.UUID(key_text)
        except ValueError:
            raise BadRequest("invalid cursor", param="cursor", code="invalid_cursor") from None
        stmt = stmt.where(or_(at < at_dt, and_(at == at_dt, key < key_id)))
    return stmt.order_by(at.desc(), key.desc()).limit(limit + 1)


class Conflict(ServiceError):
    """The thing to create exists already."""

    status_code = 409
    error_type = "invalid_request_error"


def title_of(question: str) -> str:
    """A title from the first question: its first line, at most `TITLE_MAX` characters."""
    line = " ".join(question.strip().split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


def parse_id(value: str, what: str = "conversation") -> uuid.UUID:
    """A UUID from a path or body; anything else is simply not found (no hint about the format of ids)."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no {what} {value!r}", code=f"{what}_not_found") from None


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([str(p) for p in parts])).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or len(parts) != n or not all(isinstance(p, str) for p in parts):
            raise ValueError(cursor)
        return parts
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest(
            "invalid cursor: pass the next_cursor of a previous page", param="cursor", code="invalid_cursor"
        ) from None


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# The newest messages (at most $3) within the budget ($4) of token estimates summed newest first, oldest first,
# with the conversation's message count; its newest message always comes, so that an owned conversation is never
# mistaken for a foreign one (the caller drops it when it alone is over the budget). $1: conversation, $2: owner.
# With $7, only when no other turn of the conversation is in flight (`turns.py`): else one row whose last column is
# the seconds until that turn's lease ends (and nothing is read or marked). With turn $5, that turn is marked in
# flight for $6 seconds in the same statement (when the conversation is $2's), and expired marks of it go.
CONTEXT_SQL = """
WITH blocked AS (
    SELECT extract(epoch FROM max(p.expires_at) - clock_timestamp())::float8 AS wait_s
    FROM pending_turns p
    WHERE $7 AND p.conversation_id = $1 AND p.user_id = $2 AND p.expires_at > clock_timestamp()
      AND p.turn_id IS DISTINCT FROM $5
), owned AS (
    SELECT EXISTS (SELECT 1 FROM conversations c WHERE c.id = $1 AND c.user_id = $2) AS yes
), marked AS (
    INSERT INTO pending_turns (turn_id, conversation_id, user_id, expires_at)
    SELECT $5, $1, $2, clock_timestamp() + make_interval(secs => $6)
    WHERE $5 IS NOT NULL AND (SELECT wait_s FROM blocked) IS NULL AND (SELECT yes FROM owned)
    ON CONFLICT (turn_id) DO NOTHING
), expired AS (
    DELETE FROM pending_turns WHERE $5 IS NOT NULL AND conversation_id = $1 AND expires_at <= clock_timestamp()
)
SELECT seq, role, content, used, total, NULL::float8 AS wait_s FROM (
    SELECT m.seq, m.role, m.content,
           sum(m.tokens) OVER (ORDER BY m.seq DESC ROWS UNBOUNDED PRECEDING) AS used,
           row_number() OVER (ORDER BY m.seq DESC) AS rn,
           count(*) OVER () AS total
    FROM messages m
    WHERE m.conversation_id = $1 AND (SELECT yes FROM owned) AND (SELECT wait_s FROM blocked) IS NULL
    ORDER BY m.seq DESC
    LIMIT $3
) t
WHERE used <= $4 OR rn = 1
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, wait_s FROM blocked WHERE wait_s IS NOT NULL
ORDER BY seq
"""
OWNED_SQL = "SELECT id FROM conversations WHERE id = $1 AND user_id = $2"

# Messages added to conversation $1 of owner $2, created first when $3 (title $4) and missing; its updated_at
# becomes $5; the mark of turn $19 in flight (`turns.py`) is cleared, and the reads waiting for it are woken.
# Nothing is written to a conversation of another owner (then the answer is 0: a 404). One statement: the UPDATE
# does not see a row the INSERT of the same statement made, hence the two counts.
APPEND_SQL = """
WITH made AS (
    INSERT INTO conversations (id, user_id, title, pinned, archived, created_at, updated_at)
    SELECT $1, $2, $4, false, false, $5, $5 WHERE $3
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), touched AS (
    UPDATE conversations SET updated_at = $5 WHERE id = $1 AND user_id = $2 RETURNING id
), owned AS (
    SELECT id FROM made UNION ALL SELECT id FROM touched
), added AS (
    INSERT INTO messages (id, conversation_id, role, content, tokens, sources, model, usage, latency_ms, cached,
                          cut_short, prompt_id, prompt_version, created_at)
    SELECT u.id, $1, u.role, u.content, u.tokens, u.sources::jsonb, u.model, u.usage::jsonb, u.latency_ms, u.cached,
           u.cut_short, u.prompt_id, u.prompt_version, u.created_at
    FROM unnest($6::uuid[], $7::text[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[], $13::int[],
                $14::bool[], $15::bool[], $16::uuid[], $17::int[], $18::timestamptz[])
         AS u(id, role, content, tokens, sources, model, usage, latency_ms, cached, cut_short, prompt_id,
              prompt_version, created_at)
    WHERE EXISTS (SELECT 1 FROM owned)
    RETURNING 1
), cleared AS (
    DELETE FROM pending_turns WHERE $19::uuid IS NOT NULL AND turn_id = $19 AND user_id = $2
    RETURNING conversation_id
)
SELECT (SELECT count(*) FROM owned) + 0 * (SELECT count(*) FROM added)
       + 0 * (SELECT count(pg_notify('chat_turns', conversation_id::text)) FROM cleared)
"""

# A user's ($1) conversations newest first, one more than a page ($2); ``where``: more conditions (their values are
# parameters after $2, made by `ChatHistory.list_conversations`), never text from a request.
LIST_SQL = """
SELECT id, title, pinned, archived, created_at, updated_at FROM conversations c
WHERE user_id = $1{where}
ORDER BY updated_at DESC, id DESC
LIMIT $2
"""


def conversation_out(c: Conversation) -> ConversationOut:
    return ConversationOut(
        id=str(c.id),
        title=c.title,
        pinned=c.pinned,
        archived=c.archived,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


def message_out(m: Message, feedback: Feedback | None = None) -> MessageOut:
    return MessageOut(
        id=str(m.id),
        role=m.role,
        content=m.content,
        sources=m.sources,
        model=m.model,
        usage=m.usage,
        latency_ms=m.latency_ms,
        cached=m.cached,
        cut_short=m.cut_short,
        prompt_id=str(m.prompt_id) if m.prompt_id else None,
        prompt_version=m.prompt_version,
        created_at=m.created_at,
        feedback=FeedbackIn(thumbs_up=feedback.thumbs_up, rating=feedback.rating, comment=feedback.comment)
        if feedback
        else None,
    )


def _prompt_id(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest("prompt_id must be a UUID", param="prompt_id", code="invalid_value") from None


def message_row(conversation_id: uuid.UUID, m: MessageIn, at: datetime | None = None) -> Message:
    prompt_id = _prompt_id(m.prompt_id)
    row = Message(
        id=uuid.uuid4(),
        conversation_id=conversation_id,
        role=m.role,
        content=m.content,
        tokens=estimate_tokens(m.content),
        sources=m.sources,
        model=m.model,
        usage=m.usage,
        latency_ms=m.latency_ms,
        cached=m.cached,
        cut_short=m.cut_short,
        prompt_id=prompt_id,
        prompt_version=m.prompt_version,
    )
    row.created_at = m.created_at or at or datetime.now(UTC)
    return row


class ChatHistory:
    def __init__(
        self,
        db: Database,
        *,
        max_context_messages: int = 400,
        async_commit: bool = False,
        pool_size: int = 10,
        turn_wait_s: float = 3.0,
    ) -> None:
        self.db = db
        self.max_context_messages = max_context_messages
        self.async_commit = async_commit
        self.pool_size = pool_size
        self.turn_wait_s = turn_wait_s  # the longest a read waits for a turn in flight
        self.turns = TurnWaits(asyncpg_dsn(db.url))
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pg(self) -> asyncpg.Pool:
        """The asyncpg pool of the hot paths (a chat turn's context and write, the list): prepared statements, no
        ORM, no checkout ping."""
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    # async commit: a turn's write is visible at once, only its flush to disk is not awaited
                    settings = {"synchronous_commit": "off"} if self.async_commit else {}
                    self._pool = await asyncpg.create_pool(
                        asyncpg_dsn(self.db.url), min_size=1, max_size=self.pool_size, server_settings=settings
                    )
        return self._pool

    async def close(self) -> None:
        await self.turns.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _wait_turns(self, cid: uuid.UUID, user: uuid.UUID, wait_s: float) -> bool:
        """Wait (at most ``wait_s``) until no turn of the conversation is in flight; False: one still is."""
        deadline = time.monotonic() + wait_s
        pool = await self.pg()
        while True:
            with self.turns.expect(cid) as cleared:
                left = await pool.fetchval(BLOCKED_SQL, cid, user, None)
                if left is None:
                    return True
                if not await self._wait(cleared, min(left, deadline - time.monotonic())):
                    return False

    async def _wait(self, cleared: asyncio.Future[None], wait_s: float) -> bool:
        """Wait for the clear (or the lease's end); False when past the caller's bound. The listening connection is
        opened first if it is not (then no wait: the caller reads the marks again, now listening)."""
        if wait_s <= 0:
            return False
        if not self.turns.listening():
            await self.turns.listen()
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cleared, wait_s)
        return True

    # -- conversations -------------------------------------------------------------------------------

    async def _owned(self, s: AsyncSession, user: uuid.UUID, conversation_id: str) -> Conversation:
        cid = parse_id(conversation_id)
        row = await s.get(Conversation, cid)
        if row is None or row.user_id != user:
            raise NotFound(f"no conversation {conversation_id!r}", code="conversation_not_found")
        return row

    async def create(self, user: uuid.UUID, body: ConversationCreate) -> ConversationOut:
        cid = uuid.uuid4() if body.id is None else _new_id(body.id)
        now = datetime.now(UTC)
        first = next((m.content for m in body.messages if m.role == "user"), "")
        conv = Conversation(
            id=cid,
            user_id=user,
            title=body.title if body.title is not None else title_of(first),
            pinned=body.pinned,
            archived=body.archived,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.session() as s:
                s.add(conv)
                await s.flush()
                s.add_all([message_row(cid, m, now) for m in body.messages])
        except IntegrityError:
            raise Conflict(f"conversation {body.id!r} exists already", code="conversation_exists") from None
        return conversation_out(conv)

    async def list_conversations(
        self, user: uuid.UUID, *, limit: int, cursor: str | None, q: str | None, archived: bool | None
    ) -> dict[str, Any]:
        """The caller's conversations, newest first (keyset paging on ``(updated_at, id)``), as a `ConversationPage`
        in plain values (for `json_response`): the list is the other hot path, so one prepared statement on the
        asyncpg pool (`LIST_SQL`, in four variants) and no model objects."""
        args: list[Any] = [user, limit + 1]
        where = ""
        if archived is not None:
            args.append(archived)
            where += f" AND archived = ${len(args)}"
        if cursor:
            at_text, key_text = decode_cursor(cursor, 2)
            try:
                args += [datetime.fromisoformat(at_text), uuid.UUID(key_text)]
            except ValueError:
                raise BadRequest("invalid cursor", param="cursor", code="invalid_cursor") from None
            where += f" AND (updated_at, id) < (${len(args) - 1}, ${len(args)})"
        if q:
            args.append(_like(q))
            n = len(args)
            in_messages = f"EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content ILIKE ${n})"  # noqa: S608 - fixed text, the value is a parameter
            where += f" AND (title ILIKE ${n} OR {in_messages})"
        pool = await self.pg()
        rows = await pool.fetch(LIST_SQL.format(where=where), *args)
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1][5].isoformat(), rows[-1][0]) if more else None
        data = [
            {"id": str(r[0]), "title": r[1], "pinned": r[2], "archived": r[3], "created_at": r[4], "updated_at": r[5]}
            for r in rows
        ]
        return {"data": data, "next_cursor": nxt}

    async def get(self, user: uuid.UUID, conversation_id: str) -> ConversationOut:
        async with self.db.session() as s:
            return conversation_out(await self._owned(s, user, conversation_id))

    async def patch(self, user: uuid.UUID, conversation_id: str, body: ConversationPatch) -> ConversationOut:
        async with self.db.session() as s:
            conv = await self._owned(s, user, conversation_id)
            for name in body.model_fields_set:
                value = getattr(body, name)
                if value is None:
                    raise BadRequest(f"{name} must not be null", param=name, code="invalid_value")
                setattr(conv, name, value)
            conv.updated_at = datetime.now(UTC)
        return conversation_out(conv)

    async def delete(self, user: uuid.UUID, conversation_id: str) -> None:
        cid = parse_id(conversation_id)
        async with self.db.session() as s:
            result = await s.execute(delete(Conversation).where(Conversation.id == cid, Conversation.user_id == user))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"no conversation {conversation_id!r}", code="conversation_not_found")

    # -- messages ------------------------------------------------------------------------------------

    async def messages(self, user: uuid.UUID, conversation_id: str, *, limit: int, cursor: str | None) -> MessagePage:
        """Oldest first; the cursor continues after the last message of the previous page. Waits (at most
        ``turn_wait_s``) while a turn of the conversation is in flight, so an answer just given is there."""
        await self._wait_turns(parse_id(conversation_id), user, self.turn_wait_s)
        async with self.db.session() as s:
            conv = await self._owned(s, user, conversation_id)
            stmt = (
                select(Message, Feedback)
                .outerjoin(Feedback, Feedback.message_id == Message.id)
                .where(Message.conversation_id == conv.id)
            )
            if cursor:
                (after,) = decode_cursor(cursor, 1)
                if not after.isdigit():
                    raise BadRequest("invalid cursor", param="cursor", code="invalid_cursor")
                stmt = stmt.where(Message.seq > int(after))
            rows = (await s.execute(stmt.order_by(Message.seq).limit(limit + 1))).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return MessagePage(
            data=[message_out(m, f) for m, f in rows], next_cursor=encode_cursor(rows[-1][0].seq) if more else None
        )

    async def append(
        self,
        user: uuid.UUID,
        conversation_id: str,
        messages: Sequence[MessageIn],
        *,
        create: bool,
        title: str | None,
        turn_id: uuid.UUID | None = None,
    ) -> Appended:
        """Add messages (the gateway: a question and its answer, after the answer); ``create`` makes the
        conversation of that id when there is none (its title from the first question); ``turn_id``: the turn in
        flight whose answer this is (its mark is cleared). The write of every chat turn, so one prepared statement on
        the asyncpg pool (`APPEND_SQL`)."""
        cid = parse_id(conversation_id)
        now = datetime.now(UTC)
        ids = [uuid.uuid4() for _ in messages]
        columns = (
            ids,
            [m.role for m in messages],
            [m.content for m in messages],
            [estimate_tokens(m.content) for m in messages],
            [_json_text(m.sources) for m in messages],
            [m.model for m in messages],
            [_json_text(m.usage) for m in messages],
            [m.latency_ms for m in messages],
            [m.cached for m in messages],
            [m.cut_short for m in messages],
            [_prompt_id(m.prompt_id) for m in messages],
            [m.prompt_version for m in messages],
            [m.created_at or now for m in messages],
        )
        first = next((m.content for m in messages if m.role == "user"), "")
        new_title = title if title is not None else title_of(first)
        pool = await self.pg()  # one statement: its own transaction (async commit: the pool's setting)
        owned = await pool.fetchval(APPEND_SQL, cid, user, create, new_title, now, *columns, turn_id)
        if not owned:
            raise NotFound(f"no conversation {conversation_id!r}", code="conversation_not_found")
        return Appended.model_construct(conversation_id=str(cid), message_ids=[str(i) for i in ids])

    async def context(
        self,
        user: uuid.UUID,
        conversation_id: str,
        max_tokens: int,
        *,
        turn_id: uuid.UUID | None = None,
        lease_s: float = 0.0,
    ) -> dict[str, Any]:
        """The newest messages whose token estimates fit ``max_tokens``, oldest first (a `Context` in plain values):
        one indexed query that
        checks the owner, sums the estimates newest first and returns only the kept rows. The hot path of every
        chat turn: one prepared statement on the asyncpg pool. It waits while another turn of the conversation is
        in flight (its answer not yet written), at most until that turn's lease ends and at most ``turn_wait_s``;
        with ``turn_id`` it marks that turn in flight for ``lease_s``."""
        cid = parse_id(conversation_id)
        pool = await self.pg()
        deadline = time.monotonic() + self.turn_wait_s
        wait = True
        while True:
            with self.turns.expect(cid) as cleared:
                rows = await pool.fetch(
                    CONTEXT_SQL, cid, user, self.max_context_messages, max_tokens, turn_id, lease_s, wait
                )
                if rows and rows[-1][5] is not None:  # another turn in flight
                    wait = await self._wait(cleared, min(rows[-1][5], deadline - time.monotonic()))
                    continue
            break
        if not rows and await pool.fetchval(OWNED_SQL, cid, user) is None:
            raise NotFound(f"no conversation {conversation_id!r}", code="conversation_not_found")
        kept = [{"role": r[1], "content": r[2]} for r in rows if r[3] <= max_tokens]
        total = rows[0][4] if rows else 0
        return {"conversation_id": str(cid), "messages": kept, "dropped": total - len(kept)}

    async def mark(self, user: uuid.UUID, conversation_id: str, turn_id: uuid.UUID, lease_s: float) -> bool:
        """Mark (or renew) a turn in flight without reading (`turns.py`); the conversation may not exist yet (its
        first turn). False: not marked (another user's conversation)."""
        pool = await self.pg()
        status: str = await pool.execute(MARK_SQL, parse_id(conversation_id), user, turn_id, lease_s)
        return status.endswith(" 1")

    async def release(self, user: uuid.UUID, turn_id: uuid.UUID) -> None:
        """A turn that will write nothing (its request failed): its mark goes, the reads waiting for it go on."""
        pool = await self.pg()
        await pool.fetchval(RELEASE_SQL, turn_id, user)

    async def replace_messages(
        self, user: uuid.UUID, conversation_id: str, messages: Sequence[MessageIn], title: str | None
    ) -> None:
        """OPEA's create with an id: the conversation's messages become these."""
        async with self.db.session() as s:
            conv = await self._owned(s, user, conversation_id)
            await s.execute(delete(Message).where(Message.conversation_id == conv.id))
            now = datetime.now(UTC)
            s.add_all([message_row(conv.id, m, now) for m in messages])
            conv.updated_at = now
            if title is not None:
                conv.title = title_of(title)

    # -- export / import -----------------------------------------------------------------------------

    async def export(self, user: uuid.UUID, conversation_id: str | None) -> list[ExportedConversation]:
        async with self.db.session() as s:
            if conversation_id is not None:
                convs = [await self._owned(s, user, conversation_id)]
            else:
                convs = list(
                    (
                        await s.scalars(
                            select(Conversation).where(Conversation.user_id == user).order_by(Conversation.created_at)
                        )
                    ).all()
                )
            by_id: dict[uuid.UUID, list[Message]] = {c.id: [] for c in convs}
            if convs:
                msgs = await s.scalars(
                    select(Message).where(Message.conversation_id.in_(list(by_id))).order_by(Message.seq)
                )
                for m in msgs:
                    by_id[m.conversation_id].append(m)
        return [
            ExportedConversation(
                id=str(c.id),
                title=c.title,
                pinned=c.pinned,
                archived=c.archived,
                created_at=c.created_at,
                updated_at=c.updated_at,
                messages=[MessageIn.model_validate(message_out(m).model_dump()) for m in by_id[c.id]],
            )
            for c in convs
        ]

    async def import_(self, user: uuid.UUID, conversations: Sequence[ExportedConversation]) -> Imported:
        """Every conversation gets a new id (an export imported twice makes copies); one transaction."""
        ids: list[str] = []
        count = 0
        now = datetime.now(UTC)
        async with self.db.session() as s:
            for item in conversations:
                cid = uuid.uuid4()
                s.add(
                    Conversation(
                        id=cid,
                        user_id=user,
                        title=item.title,
                        pinned=item.pinned,
                        archived=item.archived,
                        created_at=item.created_at or now,
                        updated_at=item.updated_at or item.created_at or now,
                    )
                )
                ids.append(str(cid))
            await s.flush()
            rows = [
                message_row(uuid.UUID(cid), m, now)
                for cid, item in zip(ids, conversations, strict=True)
                for m in item.messages
            ]
            s.add_all(rows)
            count = len(rows)
        return Imported(conversations=len(ids), messages=count, ids=ids)

    # -- feedback ------------------------------------------------------------------------------------

    async def _answer(self, s: AsyncSession, user: uuid.UUID, conversation_id: str, message_id: str | None) -> Message:
        conv = await self._owned(s, user, conversation_id)
        stmt = select(Message).where(Message.conversation_id == conv.id, Message.role == "assistant")
        if message_id is not None:
            stmt = stmt.where(Message.id == parse_id(message_id, "message"))
        msg = await s.scalar(stmt.order_by(Message.seq.desc()).limit(1))
        if msg is None:
            raise NotFound(f"no answer {message_id or '(newest)'!r} in that conversation", code="message_not_found")
        return msg

    async def give_feedback(
        self, user: uuid.UUID, conversation_id: str, message_id: str | None, body: FeedbackIn
    ) -> FeedbackOut:
        if body.thumbs_up is None and body.rating is None and not body.comment:
            raise BadRequest("feedback needs thumbs_up, rating or comment", code="empty_feedback")
        now = datetime.now(UTC)
        async with self.db.session() as s:
            msg = await self._answer(s, user, conversation_id, message_id)
            values = {
                "user_id": user,
                "thumbs_up": body.thumbs_up,
                "rating": body.rating,
                "comment": body.comment,
                "created_at": now,
            }
            await s.execute(
                pg_insert(Feedback)
                .values(message_id=msg.id, **values)
                .on_conflict_do_update(index_elements=["message_id"], set_=values)
            )
        return FeedbackOut(
            feedback_id=str(msg.id),
            message_id=str(msg.id),
            conversation_id=str(msg.conversation_id),
            created_at=now,
            **body.model_dump(),
        )

    async def feedback_of(
        self, user: uuid.UUID, *, conversation_id: str | None, feedback_id: str | None
    ) -> list[FeedbackOut]:
        stmt = (
            select(Feedback, Message.conversation_id)
            .join(Message, Message.id == Feedback.message_id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.user_id == user)
        )
        if conversation_id is not None:
            stmt = stmt.where(Conversation.id == parse_id(conversation_id))
        if feedback_id is not None:
            stmt = stmt.where(Feedback.message_id == parse_id(feedback_id, "feedback"))
        async with self.db.session() as s:
            rows = (await s.execute(stmt.order_by(Feedback.created_at.desc()).limit(1000))).all()
        return [_feedback_out(f, cid) for f, cid in rows]

    async def delete_feedback(self, user: uuid.UUID, feedback_id: str) -> None:
        mid = parse_id(feedback_id, "feedback")
        async with self.db.session() as s:
            result = await s.execute(delete(Feedback).where(Feedback.message_id == mid, Feedback.user_id == user))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"no feedback {feedback_id!r}", code="feedback_not_found")

    async def session_counts(self, active_within_s: int) -> SessionCounts:
        """How many conversations there are, how many users have one, how many changed one lately."""
        since = datetime.now(UTC) - timedelta(seconds=active_within_s)
        c = Conversation
        stmt = select(
            func.count(c.id),
            func.count(distinct(c.user_id)),
            func.count(distinct(c.user_id)).filter(c.updated_at >= since),
        )
        async with self.db.session() as s:
            conversations, users, active = (await s.execute(stmt)).one()
        return SessionCounts(
            conversations=conversations, users=users, active_users=active, active_within_s=active_within_s
        )

    async def feedback_report(
        self, *, limit: int, cursor: str | None, thumbs_up: bool | None, max_rating: int | None
    ) -> FeedbackReportPage:
        """For admins: feedback newest first, with the answer, its sources and the question before it."""
        stmt = select(Feedback, Message).join(Message, Message.id == Feedback.message_id)
        if thumbs_up is not None:
            stmt = stmt.where(Feedback.thumbs_up.is_(thumbs_up))
        if max_rating is not None:
            stmt = stmt.where(Feedback.rating <= max_rating)
        stmt = newest_first(stmt, cursor, Feedback.created_at, Feedback.message_id, limit)
        async with self.db.session() as s:
            rows = (await s.execute(stmt)).all()
            more = len(rows) > limit
            rows = rows[:limit]
            reports = []
            for f, m in rows:
                q = await s.scalar(
                    select(Message.content)
                    .where(Message.conversation_id == m.conversation_id, Message.seq < m.seq, Message.role == "user")
                    .order_by(Message.seq.desc())
                    .limit(1)
                )
                base = _feedback_out(f, m.conversation_id)
                reports.append(
                    FeedbackReport(
                        **base.model_dump(),
                        user_id=str(f.user_id),
                        question=q,
                        answer=m.content,
                        sources=m.sources,
                        model=m.model,
                    )
                )
        nxt = encode_cursor(rows[-1][0].created_at.isoformat(), rows[-1][0].message_id) if more else None
        return FeedbackReportPage(data=reports, next_cursor=nxt)


def _feedback_out(f: Feedback, conversation_id: uuid.UUID) -> FeedbackOut:
    return FeedbackOut(
        feedback_id=str(f.message_id),
        message_id=str(f.message_id),
        conversation_id=str(conversation_id),
        created_at=f.created_at,
        thumbs_up=f.thumbs_up,
        rating=f.rating,
        comment=f.comment,
    )


def _json_text(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _new_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest("id must be a UUID", param="id", code="invalid_value") from None

"""The logic of the prompt registry. Every call names its caller (the gateway's user); a prompt the caller may
not see is a 404, one they may see but not change is a 403."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic_core import PydanticCustomError
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from comps.core.caller import USER_ID_HEADER, Caller
from comps.core.errors import BadRequest, Forbidden, NotFound, ServiceError
from comps.prompt_registry.models import Prompt, PromptVersion
from comps.prompt_registry.protocol import PromptCreate, PromptOut, PromptVersionOut, check_template
from comps.sqlstore import Database


class Conflict(ServiceError):
    status_code = 409
    error_type = "invalid_request_error"


def _user(caller: Caller) -> uuid.UUID:
    try:
        return uuid.UUID(caller.user_id)
    except ValueError:  # the gateway always names a user by id: a call not from the gateway
        raise BadRequest(f"{USER_ID_HEADER} is not a user id: {caller.user_id!r}", param=USER_ID_HEADER) from None


def _out(p: Prompt, v: PromptVersion) -> PromptOut:
    return PromptOut(
        id=str(p.id),
        name=p.name,
        kind=p.kind,
        shared=p.owner_id is None,
        version=v.version,
        text=v.text,
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


def _not_found(ref: str) -> NotFound:
    return NotFound(f"no prompt {ref!r}", code="prompt_not_found")


class Registry:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _visible(caller: Caller) -> ColumnElement[bool]:
        return or_(Prompt.owner_id.is_(None), Prompt.owner_id == _user(caller))

    async def create(self, caller: Caller, body: PromptCreate) -> PromptOut:
        if body.shared and not caller.is_admin:
            raise Forbidden("shared prompts are managed by admins", code="admin_only")
        now = datetime.now(UTC)
        prompt = Prompt(
            id=uuid.uuid4(),
            name=body.name,
            owner_id=None if body.shared else _user(caller),
            kind=body.kind,
            version=1,
            created_at=now,
            updated_at=now,
        )
        version = PromptVersion(
            prompt_id=prompt.id, version=1, text=body.text, created_by=_user(caller), created_at=now
        )
        try:
            async with self.db.session() as s:
                s.add(prompt)
                await s.flush()
                s.add(version)
        except IntegrityError:
            where = "shared" if body.shared else "of yours"
            raise Conflict(f"a {where} prompt named {body.name!r} exists already", code="prompt_exists") from None
        return _out(prompt, version)

    async def list_prompts(self, caller: Caller, q: str | None = None) -> list[PromptOut]:
        stmt = (
            select(Prompt, PromptVersion)
            .join(PromptVersion, (PromptVersion.prompt_id == Prompt.id) & (PromptVersion.version == Prompt.version))
            .where(self._visible(caller))
        )
        if q:
            pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(or_(Prompt.name.ilike(pattern), PromptVersion.text.ilike(pattern)))
        async with self.db.session() as s:
            rows = (await s.execute(stmt.order_by(Prompt.name, Prompt.owner_id.nulls_last()).limit(1000))).all()
        return [_out(p, v) for p, v in rows]

    async def _find(self, s: AsyncSession, caller: Caller, ref: str) -> Prompt:
        """By id, or by name: the caller's own prompt of that name before the shared one."""
        try:
            pid = uuid.UUID(ref)
        except ValueError:
            pid = None
        if pid is not None:
            found = await s.scalar(select(Prompt).where(Prompt.id == pid, self._visible(caller)))
        elif "\x00" in ref:  # no name holds one (NAME_PATTERN), and PostgreSQL text cannot
            found = None
        else:
            found = await s.scalar(
                select(Prompt)
                .where(Prompt.name == ref, self._visible(caller))
                .order_by(Prompt.owner_id.nulls_last())
                .limit(1)
            )
        if found is None:
            raise _not_found(ref)
        return found

    async def get(self, caller: Caller, ref: str, version: int | None = None) -> PromptOut:
        async with self.db.session() as s:
            prompt = await self._find(s, caller, ref)
            v = await s.get(PromptVersion, (prompt.id, version or prompt.version))
            if v is None:
                raise NotFound(f"prompt {ref!r} has no version {version}", code="prompt_version_not_found")
        return _out(prompt, v)

    def _require_write(self, caller: Caller, prompt: Prompt) -> None:
        if prompt.owner_id is None and not caller.is_admin:
            raise Forbidden("shared prompts are managed by admins", code="admin_only")

    async def edit(self, caller: Caller, ref: str, text: str) -> PromptOut:
        async with self.db.session() as s:
            prompt = await self._find(s, caller, ref)
            self._require_write(caller, prompt)
            try:
                check_template(prompt.kind, text)
            except PydanticCustomError as exc:
                raise BadRequest(f"text: {exc.message()}", param="text", code="template_slots") from None
            await s.refresh(prompt, with_for_update=True)  # one new version at a time
            prompt.version += 1
            prompt.updated_at = datetime.now(UTC)
            version = PromptVersion(
                prompt_id=prompt.id,
                version=prompt.version,
                text=text,
                created_by=_user(caller),
                created_at=prompt.updated_at,
            )
            s.add(version)
        return _out(prompt, version)

    async def versions(self, caller: Caller, ref: str) -> list[PromptVersionOut]:
        async with self.db.session() as s:
            prompt = await self._find(s, caller, ref)
            rows = await s.scalars(
                select(PromptVersion).where(PromptVersion.prompt_id == prompt.id).order_by(PromptVersion.version)
            )
            return [PromptVersionOut(version=v.version, text=v.text, created_at=v.created_at) for v in rows]

    async def delete(self, caller: Caller, ref: str) -> None:
        async with self.db.session() as s:
            prompt = await self._find(s, caller, ref)
            self._require_write(caller, prompt)
            await s.delete(prompt)

"""Identity's logic: accounts, passwords, tokens, API keys, and who may read or write which collection.

Everything that runs on every request (an API key's or a user's current state, the collections table) is
read from PostgreSQL at most once per ``cache_s`` per process: a revoked key, a disabled user or a changed
role takes effect on every replica within that time, and the hot path costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from comps.core.errors import Forbidden, NotFound, Overloaded, ServiceError, Unauthorized
from comps.identity.models import ApiKey, Collection, RefreshToken, User
from comps.identity.protocol import CollectionInfo, KeyCreated, KeyInfo, TokenPair, UserInfo
from comps.sqlstore.db import Database
from comps.vectorstore.names import validate_collection

log = logging.getLogger("comps.identity")

ISSUER = "chatqna"
AUDIENCE = "chatqna"
KEY_PREFIX = "sk-"
REFRESH_PREFIX = "rt-"
V = TypeVar("V")


class Conflict(ServiceError):
    """The name is taken."""

    status_code = 409
    error_type = "conflict_error"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (through a password login, an API key or SSO), or the anonymous local admin."""

    user_id: str
    username: str
    role: str
    via: str  # password | api_key | oidc | anonymous
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal(user_id="00000000-0000-0000-0000-000000000000", username="local", role="admin", via="anonymous")


@dataclass(frozen=True, slots=True)
class Access:
    exists: bool
    readable: bool
    writable: bool


@dataclass(frozen=True, slots=True)
class _CollectionRow:
    owner_id: str | None
    owner: str | None
    visibility: str
    created_at: datetime


class TTLCache(Generic[V]):
    """A small per-process cache: entries live ``ttl_s`` seconds; the oldest go first past ``size``."""

    def __init__(self, ttl_s: float, size: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: Hashable, value: V) -> V:
        if self.ttl_s > 0:
            self._items[key] = (time.monotonic() + self.ttl_s, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def drop(self, key: Hashable) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


class LoginLimiter:
    """Failed logins per account and per address within ``window_s``; past the limit, 429 with ``Retry-After``.

    Per process: with several gateway replicas an attacker gets at most (replicas x limit) tries per window."""

    def __init__(self, per_account: int, per_address: int, window_s: float, size: int = 100_000) -> None:
        self.limits = {"user": per_account, "addr": per_address}
        self.window_s = window_s
        self.size = size
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def check(self, account: str, address: str) -> None:
        now = time.monotonic()
        wait = 0.0
        for key in (("user", account), ("addr", address)):
            seen = self._recent(key, now)
            if seen is not None and len(seen) >= self.limits[key[0]]:
                wait = max(wait, seen[0] + self.window_s - now)
        if wait > 0:
            raise Overloaded(
                "too many failed sign-in attempts; try again later",
                retry_after=max(1, int(wait) + 1),
                code="too_many_attempts",
            )

    def failed(self, account: str, address: str) -> None:
        now = time.monotonic()
        for key in (("user", account), ("addr", address)):
            seen = self._recent(key, now)
            if seen is None:
                seen = self._failures[key] = deque(maxlen=self.limits[key[0]])
            seen.append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > self.size:
            self._failures.popitem(last=False)

    def succeeded(self, account: str) -> None:
        self._failures.pop(("user", account), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        seen = self._failures.get(key)
        if seen is None:
            return None
        while seen and seen[0] + self.window_s < now:
            seen.popleft()
        return seen


def digest(secret: str) -> str:
    """How keys and refresh tokens are stored: sha256 (they are 256-bit random, so no slow hash is needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def personal_collection(user_id: uuid.UUID | str) -> str:
    """Each user's own collection, created with the account."""
    return f"u-{uuid.UUID(str(user_id)).hex[:12]}"


def valid_collection(name: str) -> str:
    return validate_collection(name, param="name")


def _now() -> datetime:
    return datetime.now(UTC)


def _created(value: datetime | None) -> datetime:
    """A row's ``created_at``: None on an object not read back since its insert (the server sets it)."""
    return value or _now()


class IdentityService:
    """Users, tokens, keys and collection access on the relational store."""

    def __init__(
        self,
        db: Database,
        *,
        jwt_secret: str,
        access_ttl_s: int = 900,
        refresh_ttl_s: int = 30 * 86_400,
        cache_s: float = 2.0,
        limiter: LoginLimiter | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.db = db
        self._secret = jwt_secret
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.limiter = limiter or LoginLimiter(5, 50, 300)
        # argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~30 ms a hash on a small CPU.
        self.hasher = hasher or PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))  # unknown users cost the same time
        self._keys: TTLCache[Principal | None] = TTLCache(cache_s)
        self._users: TTLCache[Principal | None] = TTLCache(cache_s)
        self._external: TTLCache[Principal] = TTLCache(cache_s)
        self._collections: TTLCache[dict[str, _CollectionRow]] = TTLCache(cache_s, size=1)
        self._key_used: TTLCache[bool] = TTLCache(60.0)
        self._verified: TTLCache[dict[str, Any]] = TTLCache(60.0)
        self._background: set[asyncio.Task[Any]] = set()

    # -- passwords (argon2 is CPU work: never on the event loop) --------------------------------------

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                self.hasher.verify(stored or self._dummy_hash, password)  # raises unless it matches
                return stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    # -- start-up ---------------------------------------------------------------------------------------

    async def ensure_collection(self, name: str, *, visibility: str = "shared") -> None:
        """The system's collection ``name`` exists (the default shared one, at start-up)."""
        async with self.db.session() as s:
            if await s.get(Collection, name) is None:
                s.add(Collection(name=name, owner_id=None, visibility=visibility))
        self._collections.clear()

    async def ensure_first_admin(self, username: str | None, password: str | None) -> tuple[str, str | None] | None:
        """Create an admin when none exists: ``username`` (default ``admin``) with ``password``, or a generated
        one. Returns (username, generated password or None) when it created one, None when an admin existed."""
        async with self.db.session() as s:
            if await s.scalar(select(func.count()).select_from(User).where(User.role == "admin")):
                return None
        generated = None if password else secrets.token_urlsafe(12)
        name = (username or "admin").strip().lower()
        try:
            await self.create_user(name, password or generated or "", role="admin")
        except Conflict:  # another replica won the race, or the name exists as a plain user
            async with self.db.session() as s:
                if await s.scalar(select(func.count()).select_from(User).where(User.role == "admin")):
                    return None
            raise
        return name, generated

    # -- users ------------------------------------------------------------------------------------------

    async def create_user(
        self, username: str, password: str | None, *, role: str = "user", oidc: tuple[str, str] | None = None
    ) -> UserInfo:
        pw_hash = await self._hash(password) if password else None
        issuer, subject = oidc or (None, None)
        user = User(
            id=uuid.uuid4(),
            username=username,
            password_hash=pw_hash,
            role=role,
            disabled=False,
            oidc_issuer=issuer,
            oidc_subject=subject,
            created_at=_now(),
            last_login_at=None,
        )
        try:
            async with self.db.session() as s:
                s.add(user)
                await s.flush()
                s.add(Collection(name=personal_collection(user.id), owner_id=user.id, visibility="private"))
        except IntegrityError:
            raise Conflict(f"username {username!r} is taken", param="username", code="username_taken") from None
        self._collections.clear()
        return self._info(user)

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[UserInfo]:
        async with self.db.session() as s:
            rows = await s.scalars(select(User).order_by(User.created_at, User.username).limit(limit).offset(offset))
            return [self._info(u) for u in rows]

    async def get_user(self, user_id: str) -> UserInfo:
        async with self.db.session() as s:
            return self._info(await self._user(s, user_id))

    async def update_user(
        self, user_id: str, *, role: str | None, disabled: bool | None, password: str | None, by: Principal
    ) -> UserInfo:
        pw_hash = await self._hash(password) if password else None
        async with self.db.session() as s:
            user = await self._user(s, user_id)
            if str(user.id) == by.user_id and (role == "user" or disabled):
                raise Forbidden("admins cannot demote or disable themselves", code="self_lockout")
            if role is not None:
                user.role = role
            if disabled is not None:
                user.disabled = disabled
            if pw_hash is not None:
                user.password_hash = pw_hash
            if disabled or pw_hash is not None:  # sign out everywhere
                await s.execute(
                    update(RefreshToken)
                    .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=_now())
                )
            info = self._info(user)
        self._users.drop(user_id)
        self._keys.clear()
        return info

    async def delete_user(self, user_id: str, *, by: Principal) -> None:
        if user_id == by.user_id:
            raise Forbidden("admins cannot delete themselves", code="self_lockout")
        async with self.db.session() as s:
            user = await self._user(s, user_id)
            await s.delete(user)  # keys, tokens and collections go with it (ON DELETE CASCADE)
        self._users.drop(user_id)
        self._keys.clear()
        self._collections.clear()

    async def set_password(self, username: str, password: str) -> None:
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.username == username.lower()))
            if user is None:
                raise NotFound(f"no user {username!r}")
            await self.update_user(str(user.id), role=None, disabled=None, password=password, by=ANONYMOUS)

    async def _user(self, s: Any, user_id: str) -> User:
        try:
            uid = uuid.UUID(user_id)
        except ValueError:
            raise NotFound("no such user", code="user_not_found") from None
        user = await s.get(User, uid)
        if user is None:
            raise NotFound("no such user", code="user_not_found")
        found: User = user
        return found

    @staticmethod
    def _info(user: User) -> UserInfo:
        return UserInfo(
            id=str(user.id),
            username=user.username,
            role=user.role,
            disabled=user.disabled,
            sso=user.oidc_subject is not None,
            personal_collection=personal_collection(user.id),
            created_at=_created(user.created_at),
            last_login_at=user.last_login_at,
        )

    # -- login, tokens ----------------------------------------------------------------------------------

    async def login(self, username: str, password: str, address: str) -> TokenPair:
        name = username.strip().lower()
        self.limiter.check(name, address)
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.username == name))
        ok = await self._verify(user.password_hash if user else None, password)
        if not ok or user is None:
            self.limiter.failed(name, address)
            raise Unauthorized("invalid username or password", code="invalid_credentials")
        self.limiter.succeeded(name)
        if user.disabled:
            raise Forbidden("this account is disabled", code="account_disabled")
        return await self.issue(user)

    async def issue(self, user: User, family: uuid.UUID | None = None) -> TokenPair:
        """A new access token and refresh token (in ``family`` when rotating)."""
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        async with self.db.session() as s:
            s.add(
                RefreshToken(
                    user_id=user.id,
                    family_id=family or uuid.uuid4(),
                    token_hash=digest(refresh),
                    expires_at=_now() + timedelta(seconds=self.refresh_ttl_s),
                )
            )
            await s.execute(update(User).where(User.id == user.id).values(last_login_at=_now()))
        return TokenPair(
            access_token=self.access_token(user),
            expires_in=self.access_ttl_s,
            refresh_token=refresh,
            refresh_expires_in=self.refresh_ttl_s,
            user=self._info(user),
        )

    def access_token(self, user: User) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user.id),
            "name": user.username,
            "role": user.role,
            "iat": now,
            "nbf": now,
            "exp": now + self.access_ttl_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify_access(self, token: str) -> dict[str, Any]:
        """The claims of one of our access tokens; `Unauthorized` for anything else.

        A token verified once is remembered for up to a minute (never past its ``exp``): checking the signature
        costs ~50 µs, a dict lookup a fraction of one. Who the token names is still looked up each time."""
        claims = self._verified.get(token)
        if claims is not None and claims["exp"] > time.time():
            return claims
        claims = self._decode_access(token)
        self._verified.put(token, claims)
        return claims

    def _decode_access(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=5,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("access token expired", code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("access token not valid yet", code="invalid_token") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid access token: {exc}", code="invalid_token") from None

    def seal(self, claims: dict[str, Any], audience: str, ttl_s: int) -> str:
        """A short-lived signed value for the browser to carry (e.g. the SSO flow's state and PKCE verifier)."""
        now = int(time.time())
        return jwt.encode({**claims, "aud": audience, "iat": now, "exp": now + ttl_s}, self._secret, algorithm="HS256")

    def unseal(self, value: str, audience: str) -> dict[str, Any]:
        try:
            return jwt.decode(value, self._secret, algorithms=["HS256"], audience=audience)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid or expired sign-in state: {exc}", code="invalid_state") from None

    async def refresh(self, token: str) -> TokenPair:
        async with self.db.session() as s:
            row = await s.scalar(select(RefreshToken).where(RefreshToken.token_hash == digest(token)).with_for_update())
            if row is None or row.revoked_at is not None:
                raise Unauthorized("refresh token is not valid", code="invalid_refresh_token")
            if row.used_at is not None:  # a stolen copy, or the thief's: end the whole login
                await s.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=_now())
                )
                log.warning("refresh token reuse for user %s: its login was revoked", row.user_id)
                reused = True
            else:
                reused = False
                if row.expires_at < _now():
                    raise Unauthorized("refresh token expired; sign in again", code="invalid_refresh_token")
                row.used_at = _now()
            user = await s.get(User, row.user_id)
        if reused:
            raise Unauthorized("refresh token was already used; sign in again", code="refresh_token_reused")
        if user is None or user.disabled:
            raise Unauthorized("refresh token is not valid", code="invalid_refresh_token")
        return await self.issue(user, family=row.family_id)

    async def logout(self, token: str) -> None:
        async with self.db.session() as s:
            row = await s.scalar(select(RefreshToken).where(RefreshToken.token_hash == digest(token)))
            if row is not None:
                await s.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=_now())
                )

    # -- who is calling (the hot path) ------------------------------------------------------------------

    async def principal_for_user(self, user_id: str) -> Principal:
        """The user of a valid access token, as they are now (role, disabled) within ``cache_s``."""
        found = self._users.get(user_id)
        if found is None:
            try:
                uid = uuid.UUID(user_id)
            except ValueError:
                raise Unauthorized("invalid access token", code="invalid_token") from None
            async with self.db.session() as s:
                user = await s.get(User, uid)
            found = self._users.put(
                user_id,
                Principal(str(user.id), user.username, user.role, "password") if user and not user.disabled else None,
            )
            if found is None:
                raise Unauthorized("this account no longer exists or is disabled", code="account_disabled")
        return found

    async def principal_for_key(self, key: str) -> Principal:
        h = digest(key)
        found = self._keys.get(h)
        if found is None:
            async with self.db.session() as s:
                row = (
                    await s.execute(
                        select(ApiKey, User)
                        .join(User, User.id == ApiKey.user_id)
                        .where(ApiKey.key_hash == h, ApiKey.revoked_at.is_(None), User.disabled.is_(False))
                        .where(or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > _now()))
                    )
                ).first()
            if row is None:
                raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
            key_row, user = row
            found = self._keys.put(h, Principal(str(user.id), user.username, user.role, "api_key", str(key_row.id)))
        if found is None:
            raise Unauthorized("invalid or revoked API key", code="invalid_api_key")
        if self._key_used.get(found.key_id) is None:  # last-used time, at most once a minute, off the request path
            self._key_used.put(found.key_id, True)
            self._spawn(self._touch_key(found.key_id))
        return found

    async def principal_for_external(self, issuer: str, subject: str, username: str, is_admin: bool) -> Principal:
        """The local account of an SSO identity: created at first sign-in; role follows the provider."""
        cache_key = (issuer, subject, is_admin)
        found = self._external.get(cache_key)
        if found is not None:
            return found
        role = "admin" if is_admin else "user"
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject))
            if user is not None and user.role != role:
                user.role = role
        if user is None:
            name = username.strip().lower()[:64]
            try:
                info = await self.create_user(name, None, role=role, oidc=(issuer, subject))
            except Conflict:  # a local account has that name: keep both, apart
                info = await self.create_user(
                    f"{name[:50]}-{digest(subject)[:8]}", None, role=role, oidc=(issuer, subject)
                )
            principal = Principal(info.id, info.username, role, "oidc")
        else:
            if user.disabled:
                raise Unauthorized("this account is disabled", code="account_disabled")
            principal = Principal(str(user.id), user.username, role, "oidc")
        return self._external.put(cache_key, principal)

    async def issue_for(self, principal: Principal) -> TokenPair:
        """Our own tokens for a user who signed in elsewhere (the SSO browser flow)."""
        async with self.db.session() as s:
            user = await self._user(s, principal.user_id)
        return await self.issue(user)

    async def _touch_key(self, key_id: str | None) -> None:
        async with self.db.session() as s:
            await s.execute(update(ApiKey).where(ApiKey.id == uuid.UUID(str(key_id))).values(last_used_at=_now()))

    async def close(self) -> None:
        """Let the last background writes (key last-used times) finish before the store closes."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- API keys ---------------------------------------------------------------------------------------

    async def create_key(self, principal: Principal, name: str, expires_in_days: int | None) -> KeyCreated:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        expires = _now() + timedelta(days=expires_in_days) if expires_in_days else None
        row = ApiKey(
            id=uuid.uuid4(),
            user_id=uuid.UUID(principal.user_id),
            name=name,
            prefix=key[:10],
            key_hash=digest(key),
            created_at=_now(),
            expires_at=expires,
            last_used_at=None,
            revoked_at=None,
        )
        async with self.db.session() as s:
            s.add(row)
        return KeyCreated(**self._key_info(row).model_dump(), key=key)

    async def list_keys(self, principal: Principal) -> list[KeyInfo]:
        async with self.db.session() as s:
            rows = await s.scalars(
                select(ApiKey)
                .where(ApiKey.user_id == uuid.UUID(principal.user_id), ApiKey.revoked_at.is_(None))
                .order_by(ApiKey.created_at.desc())
            )
            return [self._key_info(r) for r in rows]

    async def revoke_key(self, principal: Principal, key_id: str) -> None:
        try:
            kid = uuid.UUID(key_id)
        except ValueError:
            raise NotFound("no such key", code="key_not_found") from None
        async with self.db.session() as s:
            done = await s.execute(
                update(ApiKey)
                .where(ApiKey.id == kid, ApiKey.user_id == uuid.UUID(principal.user_id), ApiKey.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        if not done.rowcount:  # type: ignore[attr-defined]
            raise NotFound("no such key", code="key_not_found")
        self._keys.clear()

    @staticmethod
    def _key_info(row: ApiKey) -> KeyInfo:
        return KeyInfo(
            id=str(row.id),
            name=row.name,
            prefix=row.prefix,
            created_at=_created(row.created_at),
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
        )

    # -- collections ------------------------------------------------------------------------------------

    async def _collection_rows(self) -> dict[str, _CollectionRow]:
        rows = self._collections.get(0)
        if rows is None:
            async with self.db.session() as s:
                result = await s.execute(
                    select(Collection, User.username).outerjoin(User, User.id == Collection.owner_id)
                )
                rows = {
                    c.name: _CollectionRow(str(c.owner_id) if c.owner_id else None, owner, c.visibility, c.created_at)
                    for c, owner in result
                }
            self._collections.put(0, rows)
        return rows

    async def access(self, principal: Principal, name: str) -> Access:
        row = (await self._collection_rows()).get(name)
        if row is None:
            return Access(False, principal.is_admin, principal.is_admin)
        mine = row.owner_id == principal.user_id
        return Access(True, mine or principal.is_admin or row.visibility == "shared", mine or principal.is_admin)

    async def require_read(self, principal: Principal, name: str) -> None:
        """404 (not 403) when the caller may not read it: another user's collection must not be seen to exist."""
        if not (await self.access(principal, name)).readable:
            raise NotFound(f"collection {name!r} not found", param="collection", code="collection_not_found")

    async def require_write(self, principal: Principal, name: str, *, create: bool = False) -> None:
        """Write access; with ``create``, a collection nobody has yet becomes the caller's (private)."""
        access = await self.access(principal, name)
        if not access.exists and create:
            await self.create_collection(principal, name, "private")
            return
        if not access.readable:
            raise NotFound(f"collection {name!r} not found", param="collection", code="collection_not_found")
        if not access.writable:
            raise Forbidden(f"collection {name!r} is read-only for you", param="collection", code="read_only")

    async def searched_by_default(self, principal: Principal) -> set[str]:
        """The shared collections and the caller's own (an admin's too: other users' private ones are not searched
        unless named)."""
        rows = await self._collection_rows()
        return {name for name, row in rows.items() if row.visibility == "shared" or row.owner_id == principal.user_id}

    async def readable(self, principal: Principal) -> set[str]:
        rows = await self._collection_rows()
        return {name for name in rows if (await self.access(principal, name)).readable}

    async def list_collections(self, principal: Principal) -> list[CollectionInfo]:
        rows = await self._collection_rows()
        out = []
        for name, row in sorted(rows.items()):
            access = await self.access(principal, name)
            if access.readable:
                out.append(
                    CollectionInfo(
                        name=name,
                        owner=row.owner,
                        visibility=row.visibility,
                        writable=access.writable,
                        created_at=row.created_at,
                    )
                )
        return out

    async def create_collection(self, principal: Principal, name: str, visibility: str) -> CollectionInfo:
        valid_collection(name)
        if visibility == "shared" and not principal.is_admin:
            raise Forbidden("only admins create shared collections", param="visibility", code="admin_only")
        owner = None if principal.via == "anonymous" else uuid.UUID(principal.user_id)
        try:
            async with self.db.session() as s:
                row = Collection(name=name, owner_id=owner, visibility=visibility, created_at=_now())
                s.add(row)
        except IntegrityError:
            raise Conflict(f"collection {name!r} exists", param="name", code="collection_exists") from None
        self._collections.clear()
        return CollectionInfo(
            name=name,
            owner=None if owner is None else principal.username,
            visibility=visibility,
            writable=True,
            created_at=row.created_at,
        )

    async def update_collection(self, principal: Principal, name: str, visibility: str) -> CollectionInfo:
        await self.require_write(principal, name)
        if visibility == "shared" and not principal.is_admin:
            raise Forbidden("only admins share collections with everyone", param="visibility", code="admin_only")
        async with self.db.session() as s:
            await s.execute(update(Collection).where(Collection.name == name).values(visibility=visibility))
        self._collections.clear()
        return next(c for c in await self.list_collections(principal) if c.name == name)

    async def forget_collection(self, principal: Principal, name: str) -> None:
        """Remove the ownership record (after its documents were deleted)."""
        await self.require_write(principal, name)
        async with self.db.session() as s:
            await s.execute(delete(Collection).where(Collection.name == name))
        self._collections.clear()


def claims_user_id(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise Unauthorized("invalid access token", code="invalid_token")
    return sub

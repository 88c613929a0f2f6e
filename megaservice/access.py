"""Who may read and write which collection, as the gateway's routes ask it (no-ops with auth off)."""

from __future__ import annotations

from comps.identity.auth import AuthState
from comps.identity.service import IdentityService, Principal


class Access:
    def __init__(self, auth: AuthState, default_collection: str) -> None:
        self.auth = auth
        self.default_collection = default_collection

    @property
    def identity(self) -> IdentityService | None:
        return self.auth.authenticator.identity if self.auth.enabled and self.auth.authenticator else None

    async def require_read(self, principal: Principal, collection: str) -> None:
        if self.identity is not None:
            await self.identity.require_read(principal, collection)

    async def require_write(self, principal: Principal, collection: str, *, create: bool = False) -> None:
        if self.identity is not None:
            await self.identity.require_write(principal, collection, create=create)

    async def can_read(self, principal: Principal, collection: str) -> bool:
        return self.identity is None or (await self.identity.access(principal, collection)).readable

    async def readable(self, principal: Principal) -> set[str] | None:
        """The collections ``principal`` may read; None: every one (auth off, or an admin)."""
        if self.identity is None or principal.is_admin:
            return None
        return await self.identity.readable(principal)

    async def forget(self, principal: Principal, collection: str) -> None:
        if self.identity is not None:
            await self.identity.forget_collection(principal, collection)

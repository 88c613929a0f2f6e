"""Who may read and write which collection, as the gateway's routes ask it (no-ops with auth off)."""

from __future__ import annotations

from comps.identity.auth import AuthState
from comps.identity.service import IdentityService, Principal
from comps.retriever.protocol import MAX_COLLECTIONS, RetrievalOptions


class Access:
    def __init__(self, auth: AuthState, default_collection: str) -> None:
        self.auth = auth
        self.default_collection = default_collection

    @property
    def identity(self) -> IdentityService | None:
        return self.auth.authenticator.identity if self.auth.enabled and self.auth.authenticator else None

    async def scope(self, principal: Principal, options: RetrievalOptions) -> None:
        """What a chat request searches, checked: the collection(s) it names, each readable by the caller; or, when
        it names none, the shared collections and the caller's own (the default collection first)."""
        if options.collections:
            for name in options.collections:
                await self.require_read(principal, name)
        elif options.collection:
            await self.require_read(principal, options.collection)
        elif self.identity is None:
            options.collection = self.default_collection
        else:
            mine = await self.identity.searched_by_default(principal)
            first = [self.default_collection] if self.default_collection in mine else []
            ordered = [*first, *sorted(mine - {self.default_collection})]
            options.collections = ordered[:MAX_COLLECTIONS]

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

"""The identity contract, served by the gateway (the one public door).

Accounts and tokens
- ``POST /v1/auth/login`` `LoginRequest` -> `TokenPair` (a short-lived access JWT and a refresh token)
- ``POST /v1/auth/refresh`` `RefreshRequest` -> `TokenPair` (rotation: a refresh token works once; presenting
  a used one again revokes every token of its login)
- ``POST /v1/auth/logout`` `RefreshRequest` -> 204 (revokes that login's refresh tokens)
- ``POST /v1/auth/register`` `RegisterRequest` -> `UserInfo` (201; only with open registration)
- ``GET /v1/auth/me`` -> `UserInfo`
- ``GET /v1/auth/oidc/login`` -> 302 to the identity provider (authorization code + PKCE);
  ``GET /v1/auth/oidc/callback`` -> `TokenPair` (or a redirect to ``return_to`` with the tokens in the fragment)
API keys (``sk-...``, shown once, stored as a hash; work as ``Authorization: Bearer sk-...``)
- ``POST /v1/auth/keys`` `KeyCreate` -> `KeyCreated` (201); ``GET /v1/auth/keys`` -> ``list[KeyInfo]``;
  ``DELETE /v1/auth/keys/{id}`` -> 204
Administration (admins only)
- ``GET /v1/admin/users`` -> ``list[UserInfo]``; ``POST /v1/admin/users`` `UserCreate` -> `UserInfo` (201);
  ``GET|PATCH|DELETE /v1/admin/users/{id}`` (`UserUpdate`: role, disabled, password)
Collections (who may read and write which documents)
- ``GET /v1/collections`` -> ``list[CollectionInfo]`` (the ones the caller may read);
  ``POST /v1/collections`` `CollectionCreate` -> `CollectionInfo` (201; ``shared`` needs an admin);
  ``PATCH /v1/collections/{name}`` `CollectionUpdate`; ``DELETE /v1/collections/{name}`` (its documents too)

Errors: 401 with ``WWW-Authenticate`` for missing or invalid credentials, 403 for a forbidden action, 404 where
the existence of another user's thing must not leak, 409 for a name that is taken, 429 with ``Retry-After``
after repeated failed logins.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["user", "admin"]
Visibility = Literal["private", "shared"]

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256  # argon2 reads all of it; a bound keeps hashing time bounded


def _username(value: str) -> str:
    value = value.strip().lower()
    if not USERNAME_RE.match(value):
        raise ValueError("1-64 characters: letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class NewPassword(_Strict):
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class RegisterRequest(NewPassword):
    username: str

    @field_validator("username")
    @classmethod
    def _valid_username(cls, value: str) -> str:
        return _username(value)


class UserCreate(RegisterRequest):
    role: Role = "user"


class UserUpdate(_Strict):
    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class RefreshRequest(_Strict):
    refresh_token: str = Field(min_length=1, max_length=200)


class UserInfo(BaseModel):
    id: str
    username: str
    role: Role
    disabled: bool
    sso: bool = Field(description="Signs in through the OIDC provider.")
    personal_collection: str
    created_at: datetime
    last_login_at: datetime | None = None


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str
    refresh_expires_in: int
    user: UserInfo


class KeyCreate(_Strict):
    name: str = Field(default="", max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="None: does not expire.")


class KeyInfo(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyInfo):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class CollectionCreate(_Strict):
    name: str = Field(min_length=1, max_length=64, description="Letters, digits, '_', '-', '.'.")
    visibility: Visibility = "private"


class CollectionUpdate(_Strict):
    visibility: Visibility


class CollectionInfo(BaseModel):
    name: str
    owner: str | None = Field(description="Owner's username; None for the system's shared collections.")
    visibility: Visibility
    writable: bool = Field(description="Whether the caller may ingest into and delete from it.")
    created_at: datetime

"""The gateway's API as the UI uses it: one `GatewayClient` per signed-in browser session.

Every failure becomes a `GatewayError` whose ``message`` is the gateway's own (its error envelope) and whose
``hint`` says what to do; `GatewayDown` when the gateway cannot be reached at all. The access token is refreshed
before it expires, and once more on a 401 (a refresh token works once: the new pair replaces it).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

REFRESH_MARGIN_S = 30.0  # refresh the access token this long before it expires


class GatewayError(Exception):
    """The gateway refused or failed a call; ``message`` is readable, ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "", *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class GatewayDown(GatewayError):
    """The gateway cannot be reached."""


class NotAvailable(GatewayError):
    """This gateway has no such route (an older version)."""


def hint_for(status: int, code: str | None, retry_after: str | None = None) -> str:
    """What a user can do about an error of this status."""
    if status == 401:
        return "Sign in again."
    if status == 403:
        return "Your account may not do this; ask an admin."
    if status == 404:
        return "It may have been deleted: refresh the page."
    if status == 409:
        return "Choose another name."
    if status == 413:
        return "Send a smaller file, or split it."
    if status == 415:
        return "Use txt, md, html, pdf, docx, csv or json."
    if status == 429:
        wait = f" {retry_after} s" if retry_after else " a moment"
        return f"Too many requests: wait{wait} and try again."
    if status in (502, 503, 504):
        who = f"The {code} service" if code else "A service"
        return f"{who} is down or busy: try again in a moment (admins: see service status on the Admin page)."
    if 400 <= status < 500:
        return "Check what you entered and try again."
    return "Try again; if it keeps failing, tell an admin."


def error_from(resp: httpx.Response) -> GatewayError:
    """The gateway's error envelope (or whatever came instead) as a `GatewayError`."""
    message, code = f"The gateway answered {resp.status_code}.", None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message") or message)
        code = body["error"].get("code")
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        message = body["detail"]
    hint = hint_for(resp.status_code, code, resp.headers.get("retry-after"))
    return GatewayError(message, hint, status=resp.status_code, code=code)


def down(url: str, exc: Exception) -> GatewayDown:
    return GatewayDown(
        f"The gateway at {url} is not answering ({type(exc).__name__}).",
        "Check that the mesh is running (`chatqna up`); this page reconnects by itself when it is back.",
    )


class LiveAnswer:
    """An answer being streamed, which another thread may cut: Streamlit starts a new run of the page (a click,
    a new question) in a new thread while the old one still waits for the next token. Cutting shuts the socket
    down, which wakes that read at once, and the gateway, seeing the client gone, stops the generation."""

    def __init__(self) -> None:
        self.done = threading.Event()  # the streaming thread has finished with the answer
        self.cut_requested = False
        self._resp: httpx.Response | None = None

    def attach(self, resp: httpx.Response) -> None:
        self._resp = resp

    def cut(self, wait_s: float = 5.0) -> None:
        """Stop the answer and wait (bounded) until its thread has kept what it had."""
        self.cut_requested = True
        stream = self._resp.extensions.get("network_stream") if self._resp is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
        self.done.wait(wait_s)


@dataclass
class Tokens:
    access: str
    refresh: str
    expires_at: float  # monotonic

    @classmethod
    def from_pair(cls, pair: dict[str, Any]) -> Tokens:
        return cls(pair["access_token"], pair["refresh_token"], time.monotonic() + float(pair["expires_in"]))


@dataclass
class GatewayClient:
    """Calls to the gateway, signed in as one user once `login` (or `adopt`) succeeded."""

    base_url: str
    timeout_s: float = 30.0
    stream_timeout_s: float = 300.0
    tokens: Tokens | None = None
    user: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout_s)

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, headers=self._headers() if auth else None, **kw)
        except httpx.HTTPError as exc:
            raise down(self.base_url, exc) from None

    def _headers(self) -> dict[str, str]:
        if self.tokens is None:
            return {}
        if time.monotonic() > self.tokens.expires_at - REFRESH_MARGIN_S:
            self.refresh()
        assert self.tokens is not None
        return {"Authorization": f"Bearer {self.tokens.access}"}

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 202, 204), **kw: Any) -> Any:
        """The JSON answer of a call (None for 204); raises `GatewayError`."""
        resp = self._send(method, path, **kw)
        if resp.status_code == 401 and self.tokens is not None:
            self.refresh()
            resp = self._send(method, path, **kw)
        if resp.status_code not in ok:
            if resp.status_code in (404, 405) and _route_missing(resp):
                raise NotAvailable("Not available on this gateway.", "It is a newer feature: upgrade the gateway.")
            raise error_from(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        ctype = resp.headers.get("content-type", "")
        return resp.json() if "json" in ctype else resp.content

    # -- identity ----------------------------------------------------------------------------------------

    def login(self, username: str, password: str) -> dict[str, Any]:
        resp = self._send("POST", "/v1/auth/login", auth=False, json={"username": username, "password": password})
        if resp.status_code == 401:
            raise GatewayError("Wrong username or password.", "Check both and try again.", status=401)
        if resp.status_code != 200:
            raise error_from(resp)
        return self._signed_in(resp.json())

    def adopt(self, access_token: str, refresh_token: str, expires_in: float) -> dict[str, Any]:
        """Sign in with tokens the gateway's single sign-on gave the browser."""
        self.tokens = Tokens(access_token, refresh_token, time.monotonic() + float(expires_in))
        self.user = self.request("GET", "/v1/auth/me")
        return self.user or {}

    def _signed_in(self, pair: dict[str, Any]) -> dict[str, Any]:
        self.tokens = Tokens.from_pair(pair)
        self.user = pair["user"]
        return pair["user"]  # type: ignore[no-any-return]

    def refresh(self) -> None:
        with self._lock:
            tokens = self.tokens
            if tokens is None:
                raise GatewayError("You are signed out.", "Sign in again.", status=401)
            if time.monotonic() < tokens.expires_at - REFRESH_MARGIN_S and self.tokens is not tokens:
                return  # another call refreshed meanwhile
            resp = self._send("POST", "/v1/auth/refresh", auth=False, json={"refresh_token": tokens.refresh})
            if resp.status_code != 200:
                self.tokens = None
                raise GatewayError("Your session has ended.", "Sign in again.", status=401)
            self._signed_in(resp.json())

    def logout(self) -> None:
        if self.tokens is not None:
            try:
                self._send("POST", "/v1/auth/logout", auth=False, json={"refresh_token": self.tokens.refresh})
            except GatewayDown:
                pass
        self.tokens = None
        self.user = None

    @property
    def signed_in(self) -> bool:
        return self.tokens is not None

    @property
    def is_admin(self) -> bool:
        return bool(self.user and self.user.get("role") == "admin")

    def sso_enabled(self) -> bool:
        """Whether the gateway has single sign-on configured (its login route redirects, else 404)."""
        try:
            resp = self._http.get("/v1/auth/oidc/login", follow_redirects=False)
        except httpx.HTTPError:
            return False
        return resp.status_code in (302, 303, 307)

    def sso_login_url(self, return_to: str) -> str:
        return str(httpx.URL(self.base_url + "/v1/auth/oidc/login", params={"return_to": return_to}))

    def health(self) -> bool:
        try:
            return self._http.get("/v1/health_check", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    # -- chat --------------------------------------------------------------------------------------------

    @contextmanager
    def stream_answer(self, body: dict[str, Any], live: LiveAnswer | None = None) -> Iterator[Iterator[str]]:
        """The lines of a streamed answer; leaving the block closes the connection, which stops the answer.
        ``live`` gets the connection, so that another thread can cut it (`LiveAnswer.cut`)."""
        headers = self._headers()
        try:
            with self._http.stream(
                "POST",
                "/v1/chatqna",
                json={**body, "stream": True},
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, read=self.stream_timeout_s),
            ) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise error_from(resp)
                if live is not None:
                    live.attach(resp)
                yield resp.iter_lines()
        except httpx.HTTPError as exc:
            if live is not None and live.cut_requested:
                return  # cut on purpose: the answer ends here
            raise down(self.base_url, exc) from None

    def models(self) -> dict[str, Any]:
        """``{"default", "models": [{"id", "status", "reason", ...}]}``: the status route, else the plain list."""
        try:
            return self.request("GET", "/v1/models/status")  # type: ignore[no-any-return]
        except NotAvailable:
            listed = self.request("GET", "/v1/models")
            models = [{"id": m["id"], "status": "unknown", "reason": None} for m in listed.get("data", [])]
            return {"default": models[0]["id"] if models else None, "models": models}

    def prompts(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/prompts")  # type: ignore[no-any-return]

    def collections(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/collections")  # type: ignore[no-any-return]

    def create_collection(self, name: str, visibility: str) -> dict[str, Any]:
        return self.request("POST", "/v1/collections", json={"name": name, "visibility": visibility})  # type: ignore[no-any-return]

    # -- conversations and feedback ----------------------------------------------------------------------

    def conversations(self, q: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit} | ({"q": q} if q else {})
        return self.request("GET", "/v1/conversations", params=params)["data"]  # type: ignore[no-any-return]

    def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = self.request("GET", f"/v1/conversations/{conversation_id}/messages", params=params)
            out += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def rename(self, conversation_id: str, title: str) -> None:
        self.request("PATCH", f"/v1/conversations/{conversation_id}", json={"title": title})

    def delete_conversation(self, conversation_id: str) -> None:
        self.request("DELETE", f"/v1/conversations/{conversation_id}")

    def export(self, conversation_id: str) -> bytes:
        resp = self._send("GET", f"/v1/conversations/{conversation_id}/export", params={"format": "json"})
        if resp.status_code != 200:
            raise error_from(resp)
        return resp.content

    def feedback(self, conversation_id: str, message_id: str | None, thumbs_up: bool) -> None:
        """On an answer (its id), or on the conversation's newest answer (the one just streamed)."""
        if message_id:
            path = f"/v1/conversations/{conversation_id}/messages/{message_id}/feedback"
            self.request("POST", path, json={"thumbs_up": thumbs_up})
        else:
            body = {"chat_id": conversation_id, "feedback_data": {"is_thumbs_up": thumbs_up}}
            self.request("POST", "/v1/feedback/create", json=body)

    # -- documents ---------------------------------------------------------------------------------------

    def ingest(
        self, collection: str, files: list[tuple[str, bytes, str]], links: list[str] | None = None
    ) -> list[dict[str, Any]]:
        import json

        data: dict[str, str] = {"collection": collection}
        if links:
            data["link_list"] = json.dumps(links)
        parts = [("files", (name, content, ctype or "application/octet-stream")) for name, content, ctype in files]
        answer = self.request("POST", "/v1/dataprep/ingest", data=data, files=parts or None)
        return answer["jobs"]  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/dataprep/jobs/{job_id}")  # type: ignore[no-any-return]

    def documents(self, collection: str) -> list[dict[str, Any]]:
        answer = self.request("POST", "/v1/dataprep/get", json={"collection": collection})
        if isinstance(answer, dict):
            return answer.get("documents") or answer.get("data") or []
        return answer or []

    def delete_document(self, collection: str, doc_id: str) -> None:
        self.request("POST", "/v1/dataprep/delete", json={"file_path": doc_id, "collection": collection})

    # -- administration ----------------------------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        return self.request("GET", "/v1/admin/users")  # type: ignore[no-any-return]

    def create_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        body = {"username": username, "password": password, "role": role}
        return self.request("POST", "/v1/admin/users", json=body)  # type: ignore[no-any-return]

    def update_user(self, user_id: str, **changes: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/v1/admin/users/{user_id}", json=changes)  # type: ignore[no-any-return]

    def usage(self, group_by: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        params = {"group_by": group_by} | ({"from": start} if start else {}) | ({"to": end} if end else {})
        return self.request("GET", "/v1/admin/usage", params=params)  # type: ignore[no-any-return]

    def system(self) -> dict[str, Any]:
        return self.request("GET", "/v1/admin/system")  # type: ignore[no-any-return]

    def cache_stats(self) -> dict[str, Any]:
        return self.request("GET", "/v1/admin/cache/stats")  # type: ignore[no-any-return]

    def cache_flush(self) -> dict[str, Any]:
        return self.request("POST", "/v1/admin/cache/flush")  # type: ignore[no-any-return]

    def ready(self) -> dict[str, Any]:
        """The gateway's readiness: which services of its pipeline answer."""
        resp = self._send("GET", "/v1/ready", auth=False)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        return {"ready": resp.status_code == 200, **(body if isinstance(body, dict) else {})}

    def feedback_report(self, thumbs_up: bool | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit} | (
            {"thumbs_up": str(thumbs_up).lower()} if thumbs_up is not None else {}
        )
        return self.request("GET", "/v1/admin/feedback", params=params)["data"]  # type: ignore[no-any-return]


def _route_missing(resp: httpx.Response) -> bool:
    """A 404/405 of a route this gateway does not have (the framework's bare "Not Found"), not of a missing thing
    (those name it: "no job 'x'")."""
    try:
        body = resp.json()
    except ValueError:
        return True
    error = body.get("error") if isinstance(body, dict) else None
    message = (
        error.get("message") if isinstance(error, dict) else (body.get("detail") if isinstance(body, dict) else None)
    )
    return message in ("Not Found", "Method Not Allowed")

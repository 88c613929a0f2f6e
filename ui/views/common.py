"""What every page shares: the settings, the signed-in client of this browser, errors shown as messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from ui.client import GatewayClient, GatewayDown, GatewayError
from ui.sessions import COOKIE, Sessions
from ui.settings import UISettings

T = TypeVar("T")


@st.cache_resource
def settings() -> UISettings:
    """Read once per process."""
    return UISettings()


@st.cache_resource
def sessions() -> Sessions:
    return Sessions(settings().session_ttl_s)


def new_client() -> GatewayClient:
    s = settings()
    return GatewayClient(s.gateway_url, timeout_s=s.timeout_s, stream_timeout_s=s.stream_timeout_s)


def current_client() -> GatewayClient | None:
    """This browser's signed-in client: from this session, else from its cookie (a reload), else None."""
    client: GatewayClient | None = st.session_state.get("client")
    if client is None:
        client = sessions().get(st.context.cookies.get(COOKIE))
        if client is not None:
            st.session_state.client = client
    return client if client is not None and client.signed_in else None


def remember(client: GatewayClient) -> None:
    """Keep a new sign-in for this session, and for reloads of this browser (a cookie with an opaque id)."""
    sid = sessions().add(client)
    st.session_state.client = client
    st.session_state.cookie = (sid, int(settings().session_ttl_s))


def write_cookie() -> None:
    pending = st.session_state.pop("cookie", None)
    if pending is None:
        return
    sid, max_age = pending
    st.html(
        f"<script>document.cookie = '{COOKIE}={sid}; path=/; max-age={max_age}; SameSite=Strict';</script>",
        unsafe_allow_javascript=True,
    )


def sign_out() -> None:
    sessions().drop(st.context.cookies.get(COOKIE))
    client = st.session_state.get("client")
    if client is not None:
        client.logout()
    st.session_state.clear()
    st.session_state.cookie = ("", 0)  # expire it


def cut_live_answer() -> None:
    """A new run of the page while an answer streams (Streamlit runs it in a new thread at once): stop that
    answer first, so that the page shows it as it was cut."""
    live = st.session_state.pop("live", None)
    if live is not None and not live.done.is_set():
        live.cut()


def cached(key: str, ttl_s: float, fetch: Callable[[], T]) -> T:
    """``fetch()``, kept in this session for ``ttl_s`` (pickers' lists: not one call per rerun)."""
    store: dict[str, tuple[float, Any]] = st.session_state.setdefault("_cache", {})
    hit = store.get(key)
    if hit is not None and time.monotonic() - hit[0] < ttl_s:
        return hit[1]  # type: ignore[no-any-return]
    value = fetch()
    store[key] = (time.monotonic(), value)
    return value


def forget(*keys: str) -> None:
    store: dict[str, Any] = st.session_state.get("_cache", {})
    for key in keys:
        store.pop(key, None)


def show_error(exc: GatewayError) -> None:
    st.error(f"**{exc.message}**\n\n{exc.hint}".strip(), icon=":material/error:")


def show_down(exc: GatewayDown, client: GatewayClient) -> None:
    """The gateway is down: say so, and rerun the page by itself once it answers again."""
    st.error(f"**{exc.message}**\n\n{exc.hint}", icon=":material/cloud_off:")

    @st.fragment(run_every=2)
    def probe() -> None:
        if client.health():
            st.rerun(scope="app")
        st.caption(f"Last checked {time.strftime('%H:%M:%S')}: still not answering.")

    probe()

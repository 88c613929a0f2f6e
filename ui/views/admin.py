"""The admin page (admins only): users, usage charts, the answer cache, each service's status, feedback."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any

import streamlit as st

from ui import state
from ui.client import GatewayClient, GatewayError, NotAvailable
from ui.views import common


def section(fetch: Callable[[], Any]) -> Any:
    """``fetch()``, or None after saying why (a route this gateway lacks is "not available", not a failure)."""
    try:
        return fetch()
    except NotAvailable:
        st.info("Not available on this gateway.", icon=":material/info:")
    except GatewayError as exc:
        common.show_error(exc)
    return None


def users(client: GatewayClient) -> None:
    listed = section(client.users) or []
    for user in listed:
        name, role, disabled, reset = st.columns([3, 2, 2, 2])
        name.markdown(f"**{user['username']}**" + (" (SSO)" if user.get("sso") else ""))
        new_role = role.selectbox("Role", ["user", "admin"], index=["user", "admin"].index(user["role"]),
                                  key=f"role-{user['id']}", label_visibility="collapsed")  # fmt: skip
        new_disabled = disabled.toggle("Disabled", value=user["disabled"], key=f"dis-{user['id']}")
        if (new_role, new_disabled) != (user["role"], user["disabled"]):
            if section(partial(client.update_user, user["id"], role=new_role, disabled=new_disabled)):
                st.rerun()
        if reset.button("Reset password", key=f"reset-{user['id']}"):
            password = secrets.token_urlsafe(12)
            if section(partial(client.update_user, user["id"], password=password)):
                st.success(f"New password of {user['username']}: `{password}` (shown once)")
    with st.form("new-user", clear_on_submit=True):
        st.markdown("**New user**")
        username = st.text_input("Username")
        password = st.text_input("Password (8+ characters)", type="password")
        new_role = st.selectbox("Role", ["user", "admin"]) or "user"
        if st.form_submit_button("Create user") and section(partial(client.create_user, username, password, new_role)):
            st.rerun()


def usage(client: GatewayClient) -> None:
    for group_by, title in (("user", "By user"), ("model", "By model"), ("day", "Over time")):
        st.markdown(f"**{title}**")
        report = section(partial(client.usage, group_by))
        if report is None:
            return
        rows = report.get("rows", [])
        if not rows:
            st.caption("No requests yet.")
            continue
        data = {
            "key": [r["key"] for r in rows],
            "requests": [r["requests"] for r in rows],
            "tokens": [r["prompt_tokens"] + r["completion_tokens"] for r in rows],
        }
        chart = st.line_chart if group_by == "day" else st.bar_chart
        chart(data, x="key", y=["requests", "tokens"] if group_by != "day" else "requests")


def cache(client: GatewayClient) -> None:
    stats = section(client.cache_stats)
    if stats is None:
        return
    a, b, c, d = st.columns(4)
    a.metric("Entries", stats.get("entries", 0))
    b.metric("Hit rate", f"{100 * float(stats.get('hit_rate') or 0):.0f} %")
    c.metric("Hits / misses", f"{stats.get('hits', 0)} / {stats.get('misses', 0)}")
    d.metric("Size", f"{int(stats.get('bytes') or 0) / 1e6:.1f} MB")
    st.caption(f"Enabled: {stats.get('enabled')} · TTL {stats.get('ttl_s')} s · at most {stats.get('max_entries')}")
    if st.button("Flush the cache", key="flush", icon=":material/delete_sweep:"):
        flushed = section(client.cache_flush)
        if flushed is not None:
            st.success(f"Flushed {flushed.get('flushed', 0)} entries.")


def services(client: GatewayClient) -> None:
    system = None
    try:
        system = client.system()
    except NotAvailable:
        pass
    if system is not None:
        st.caption(f"Gateway up for {int(system.get('uptime_s', 0))} s")
        rows = system.get("services", [])
    else:
        ready = client.ready()
        rows = [{"name": name, "ready": ok, "detail": ""} for name, ok in _ready_services(ready).items()]
        st.caption("From the gateway's readiness (its detailed status route is not available on this gateway).")
    for row in rows:
        mark = ":green[ready]" if row.get("ready") else ":red[not ready]"
        st.markdown(f"**{row['name']}** {mark} {row.get('detail') or ''}")


def _ready_services(ready: dict[str, Any]) -> dict[str, bool]:
    listed = ready.get("services")
    if isinstance(listed, dict):
        return {str(k): bool(v.get("ready", True)) if isinstance(v, dict) else bool(v) for k, v in listed.items()}
    if isinstance(listed, list):
        return {str(n): bool(ready.get("ready")) for n in listed}
    return {"gateway": bool(ready.get("ready"))}


def feedback(client: GatewayClient) -> None:
    only_bad = st.toggle("Only thumbs down", key="fb-bad")
    reports = section(lambda: client.feedback_report(thumbs_up=False if only_bad else None)) or []
    if not reports:
        st.caption("No feedback yet.")
    for item in reports:
        thumb = {True: ":material/thumb_up:", False: ":material/thumb_down:"}.get(item.get("thumbs_up"), "")
        with st.expander(f"{thumb} {(item.get('question') or '')[:80]}"):
            st.markdown(f"**Question:** {item.get('question') or ''}")
            st.markdown(f"**Answer:** {item.get('answer') or ''}")
            if item.get("comment"):
                st.markdown(f"**Comment:** {item['comment']}")
            for source in item.get("sources") or []:
                st.caption(f"{state.source_label(source)}: {source.get('text', '')}")


def render() -> None:
    client = common.current_client()
    assert client is not None
    if not client.is_admin:
        st.error("Only admins may see this page.")
        return
    st.title("Admin")
    tabs = st.tabs(["Users", "Usage", "Cache", "Services", "Feedback"])
    for tab, show in zip(tabs, (users, usage, cache, services, feedback), strict=True):
        with tab:
            show(client)

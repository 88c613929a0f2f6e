"""The Streamlit entry point (`python -m ui` runs it): sign-in, then the pages this user may see."""

from __future__ import annotations

import streamlit as st

from ui.client import GatewayClient, GatewayDown, GatewayError
from ui.sessions import COOKIE
from ui.views import admin, chat, common, documents


def sign_in() -> None:
    settings = common.settings()
    st.title("ChatQnA")
    # Single sign-on comes back with the gateway's tokens in the URL fragment, which only the page sees: it moves
    # them into the query string once, where this script reads (and then clears) them.
    st.html(
        "<script>if (location.hash.includes('access_token=')) "
        "location.replace(location.pathname + '?' + location.hash.slice(1));</script>",
        unsafe_allow_javascript=True,
    )
    params = st.query_params
    if "access_token" in params and "refresh_token" in params:
        client = common.new_client()
        try:
            client.adopt(params["access_token"], params["refresh_token"], float(params.get("expires_in", "60")))
        except GatewayError as exc:
            common.show_error(exc)
        else:
            st.query_params.clear()
            common.remember(client)
            st.rerun()
    with st.form("sign-in", border=True):
        username = st.text_input("Username", autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        client = common.new_client()
        try:
            client.login(username, password)
        except GatewayDown as exc:
            common.show_down(exc, client)
            return
        except GatewayError as exc:
            common.show_error(exc)
            return
        common.remember(client)
        st.rerun()
    probe = common.new_client()
    if common.cached("sso", 60, probe.sso_enabled):
        st.link_button("Sign in with SSO", probe.sso_login_url(settings.own_url + "/"))


def main() -> None:
    st.set_page_config(page_title="ChatQnA", page_icon=":material/forum:", layout="centered")
    common.write_cookie()
    common.cut_live_answer()
    client = common.current_client()
    if client is None:
        sign_in()
        return
    pages = [
        st.Page(chat.render, title="Chat", icon=":material/chat:", url_path="chat", default=True),
        st.Page(documents.render, title="Documents", icon=":material/description:", url_path="documents"),
    ]
    if client.is_admin:
        pages.append(st.Page(admin.render, title="Admin", icon=":material/admin_panel_settings:", url_path="admin"))
    page = st.navigation(pages, position="top")
    with st.sidebar:
        user = client.user or {}
        st.caption(f"Signed in as **{user.get('username', '?')}** ({user.get('role', 'user')})")
        if st.button("Sign out", key="sign-out", icon=":material/logout:"):
            common.sign_out()
            st.rerun()
    try:
        page.run()
    except GatewayDown as exc:
        common.show_down(exc, client)
    except GatewayError as exc:
        if exc.status == 401:
            common.sign_out()
            st.warning(f"{exc.message} {exc.hint}")
            st.rerun()
        common.show_error(exc)


__all__ = ["COOKIE", "GatewayClient", "main"]

main()

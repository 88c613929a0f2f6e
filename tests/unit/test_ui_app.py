"""The chat UI's pages with Streamlit's AppTest (no browser, no gateway): a fake client stands in for the
gateway, so that what each page shows for an answer, an error and a missing route is checked in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from comps.runtime.process import free_port
from tests.support.procs import REPO
from ui.client import GatewayClient, GatewayError, LiveAnswer, NotAvailable

pytestmark = pytest.mark.unit

APP = str(REPO / "ui" / "app.py")


class FakeGateway(GatewayClient):
    """A signed-in client whose gateway answers from memory."""

    def __init__(self, role: str = "user", answer: list[dict[str, Any]] | None = None) -> None:
        super().__init__("http://gateway.invalid")
        self.tokens = None
        self.user = {"id": "u1", "username": "ann", "role": role, "personal_collection": "u-ann"}
        self.answer = answer or []
        self.asked: list[dict[str, Any]] = []
        self.feedbacks: list[tuple[str, str | None, bool]] = []

    @property
    def signed_in(self) -> bool:
        return True

    def models(self) -> dict[str, Any]:
        return {"default": "smol", "models": [{"id": "smol", "status": "ready", "reason": None}]}

    def prompts(self) -> list[dict[str, Any]]:
        return [{"name": "terse"}]

    def collections(self) -> list[dict[str, Any]]:
        return [{"name": "handbook", "writable": False}, {"name": "u-ann", "writable": True}]

    def conversations(self, q: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [{"id": "c0", "title": "Earlier chat"}]

    @contextmanager
    def stream_answer(self, body: dict[str, Any], live: LiveAnswer | None = None) -> Iterator[Iterator[str]]:
        self.asked.append(body)
        yield iter([f"data: {json.dumps(chunk)}" for chunk in self.answer] + ["data: [DONE]"])

    def users(self) -> list[dict[str, Any]]:
        raise GatewayError("store is down", "Try again.", status=503)

    def usage(self, group_by: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        raise NotAvailable("Not available on this gateway.")

    def cache_stats(self) -> dict[str, Any]:
        raise NotAvailable("Not available on this gateway.")

    def system(self) -> dict[str, Any]:
        raise NotAvailable("Not available on this gateway.")

    def ready(self) -> dict[str, Any]:
        return {"ready": True, "services": ["llm", "retriever"]}

    def feedback_report(self, thumbs_up: bool | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return []


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UI_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    st.cache_resource.clear()


def app(client: GatewayClient | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    if client is not None:
        at.session_state["client"] = client
    return at.run()


def test_signed_out_shows_the_sign_in_form_and_a_gateway_that_is_down_reads_as_such() -> None:
    at = app()
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    at.text_input[0].input("ann")
    at.text_input[1].input("secret-pw")
    at = at.button[0].click().run()
    assert not at.exception
    assert "is not answering" in at.error[0].value and "reconnects by itself" in at.error[0].value


def test_an_answer_streams_in_with_its_sources_and_continues_the_conversation() -> None:
    first = {
        "choices": [{"delta": {"content": "Idris "}, "finish_reason": None}],
        "sources": [{"source": "zorblax.txt", "page": 2, "text": "commissioned by Idris Vantablack"}],
        "conversation_id": "c1",
    }
    rest = {"choices": [{"delta": {"content": "Vantablack."}, "finish_reason": "stop"}]}
    client = FakeGateway(answer=[first, rest])
    at = app(client)
    assert not at.exception
    assert at.selectbox(key="model").value == "smol" and "(ready)" in at.selectbox(key="model").format_func("smol")
    assert at.sidebar.button(key="conv-c0").label == "Earlier chat"
    at = at.chat_input(key="question").set_value("Who commissioned it?").run()
    assert not at.exception
    assert client.asked[0]["store"] is True and client.asked[0]["messages"] == "Who commissioned it?"
    answer = at.chat_message[1]
    assert answer.markdown[0].value == "Idris Vantablack."
    assert answer.expander[0].label == "Sources (1)" and "zorblax.txt, p. 2" in answer.expander[0].markdown[0].value
    at = at.chat_input(key="question").set_value("And when?").run()
    assert client.asked[1]["conversation_id"] == "c1" and "store" not in client.asked[1]


def admin_page() -> None:
    from ui.views import admin

    admin.render()


def test_admin_sections_say_not_available_or_the_error_never_a_traceback() -> None:
    at = AppTest.from_function(admin_page, default_timeout=30)
    at.session_state["client"] = FakeGateway(role="admin")
    at.run()
    assert not at.exception
    assert "store is down" in at.error[0].value
    assert any("Not available on this gateway." in i.value for i in at.info)

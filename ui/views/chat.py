"""The chat page: conversations in the sidebar, the pickers and knobs, the turns, and the answer as it streams."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import state, stream
from ui.client import GatewayClient, GatewayError, LiveAnswer
from ui.views import common

LIST_TTL_S = 30.0


def current_chat() -> state.Chat:
    chat: state.Chat = st.session_state.setdefault("chat", state.Chat())
    return chat


def open_conversation(client: GatewayClient, conversation_id: str) -> None:
    st.session_state.chat = state.chat_from_messages(conversation_id, client.messages(conversation_id))


def sidebar(client: GatewayClient, chat: state.Chat) -> None:
    with st.sidebar:
        if st.button("New chat", icon=":material/add:", key="new-chat", width="stretch"):
            st.session_state.chat = state.Chat()
            st.rerun()
        query = st.text_input("Search conversations", key="conv-search", placeholder="Search conversations")
        conversations = common.cached(f"conversations:{query}", LIST_TTL_S, lambda: client.conversations(q=query))
        st.caption("Conversations" if conversations else "No conversations yet.")
        for conv in conversations:
            current = conv["id"] == chat.conversation_id
            label = conv["title"] or "Untitled"
            if st.button(label, key=f"conv-{conv['id']}", type="primary" if current else "tertiary", width="stretch"):
                open_conversation(client, conv["id"])
                st.rerun()
        if chat.conversation_id:
            title = next((c["title"] for c in conversations if c["id"] == chat.conversation_id), "")
            with st.expander("This conversation", icon=":material/edit:"):
                new_title = st.text_input("Title", value=title, key=f"title-{chat.conversation_id}")
                if st.button("Rename", key="rename") and new_title.strip():
                    client.rename(chat.conversation_id, new_title.strip())
                    common.forget(f"conversations:{query}")
                    st.rerun()
                st.download_button(
                    "Export (JSON)",
                    data=lambda: client.export(chat.conversation_id or ""),
                    file_name=state.conversation_file_name(title, chat.conversation_id),
                    mime="application/json",
                    key="export",
                    on_click="ignore",
                )
                if st.button("Delete", key="delete-conv", icon=":material/delete:"):
                    client.delete_conversation(chat.conversation_id)
                    st.session_state.chat = state.Chat()
                    common.forget(f"conversations:{query}")
                    st.rerun()


def pickers(client: GatewayClient) -> state.Options:
    options: state.Options = st.session_state.setdefault("options", state.Options())
    models = common.cached("models", LIST_TTL_S, client.models)
    prompts = common.cached("prompts", LIST_TTL_S, client.prompts)
    collections = common.cached("collections", LIST_TTL_S, client.collections)
    left, middle, right = st.columns(3)
    by_id = {m["id"]: m for m in models.get("models", [])}
    ids = list(by_id) or [None]
    default = models.get("default")
    options.model = left.selectbox(
        "Model",
        ids,
        index=ids.index(default) if default in ids else 0,
        format_func=lambda i: state.model_label(by_id[i]) if i in by_id else "the gateway's default",
        key="model",
    )
    chosen = by_id.get(options.model or "")
    if chosen and chosen.get("status") not in (None, "ready", "unknown"):
        st.warning(f"{chosen['id']} is {chosen['status']}: {chosen.get('reason') or 'answers may fail'}.")
    names = [None] + [p["name"] for p in prompts]
    options.prompt = middle.selectbox("Prompt", names, format_func=lambda n: n or "Default prompt", key="prompt")
    coll_names = [None] + [c["name"] for c in collections]
    options.collection = right.selectbox(
        "Collection", coll_names, format_func=lambda n: n or "All I can read", key="collection"
    )
    with st.expander("Advanced", icon=":material/tune:", key="advanced", on_change="rerun"):  # stays open
        a, b = st.columns(2)
        options.k = a.slider("Passages retrieved (k)", 1, 20, options.k, key="k")
        options.top_n = b.slider("Passages kept after reranking", 1, 10, options.top_n, key="top_n")
        options.search_type = a.selectbox(
            "Search", ["similarity", "mmr", "hybrid"], key="search_type", help="hybrid: BM25 with vectors"
        )
        options.rerank = b.toggle("Rerank", value=options.rerank, key="rerank")
        options.retrieval = b.toggle("Search my documents", value=options.retrieval, key="retrieval",
                                     help="Off: the model answers alone, without passages")  # fmt: skip
        temperature = a.slider("Temperature", 0.0, 1.5, 0.0, 0.05, key="temperature", help="0: greedy")
        options.temperature = temperature or None
        max_tokens = b.number_input("Max answer tokens (0: default)", 0, 4096, 0, 16, key="max_tokens")
        options.max_tokens = int(max_tokens) or None
    return options


def show_turn(client: GatewayClient, chat: state.Chat, index: int, turn: state.Turn) -> None:
    with st.chat_message(turn.role):
        st.markdown(turn.content or ("_(no answer)_" if turn.role == "assistant" else ""))
        if turn.role != "assistant":
            return
        if turn.stopped:
            st.caption("Stopped before the end.")
        if turn.error:
            st.error(turn.error, icon=":material/error:")
        show_sources(turn.sources)
        fb_col, copy_col = st.columns([1, 1])
        with fb_col:
            value = st.feedback("thumbs", key=f"fb-{chat.conversation_id}-{index}", default=_thumbs(turn.feedback))
            given = None if value is None else value == 1
            if given is not None and given != turn.feedback and chat.conversation_id:
                client.feedback(chat.conversation_id, turn.message_id, given)
                turn.feedback = given
                st.toast("Thanks for the feedback.")
        with copy_col.popover("Copy", icon=":material/content_copy:"):
            st.code(turn.content, language=None, wrap_lines=True)


def _thumbs(value: bool | None) -> int | None:
    return None if value is None else int(value)


def show_sources(sources: list[dict[str, Any]]) -> None:
    if not sources:
        return
    with st.expander(f"Sources ({len(sources)})", icon=":material/menu_book:"):
        for n, source in enumerate(sources, 1):
            st.markdown(f"**[{n}] {state.source_label(source)}**")
            st.caption(source.get("text") or "")


def answer(client: GatewayClient, chat: state.Chat, question: str, options: state.Options) -> None:
    """Stream the answer to ``question``. The Stop button (any click or new question, in fact) reruns the page in
    a new thread, whose first act is to cut this answer (`cut_live_answer`): the connection closes, the gateway
    cancels the generation, and the partial answer is kept here, marked stopped, before the new run shows it."""
    body = state.chat_request(chat, question, options)
    chat.start(question)
    with st.chat_message("user"):
        st.markdown(question)
    turn = state.Turn("assistant", "")
    finished = False
    live = st.session_state.live = LiveAnswer()
    with st.chat_message("assistant"):
        stop = st.empty()
        stop.button("Stop", key="stop", icon=":material/stop_circle:")
        placeholder = st.empty()
        placeholder.markdown(":gray[_Searching your documents..._]")
        try:
            with client.stream_answer(body, live) as lines:
                for event in stream.events(lines):
                    if isinstance(event, stream.Meta):
                        turn.sources = event.sources
                        if event.conversation_id:
                            chat.conversation_id = event.conversation_id
                    elif isinstance(event, stream.Token):
                        turn.content += event.text
                        placeholder.markdown(turn.content)
                    elif isinstance(event, stream.Failure):
                        turn.error = f"The answer failed: {event.message}. Try again in a moment."
                    finished = True if isinstance(event, stream.Done | stream.Failure) else finished
        except GatewayError as exc:
            turn.error = f"{exc.message} {exc.hint}"
            finished = True
        finally:
            turn.stopped = not finished
            chat.turns.append(turn)
            live.done.set()
            if finished:
                stop.empty()
            common.forget(*[k for k in st.session_state.get("_cache", {}) if k.startswith("conversations:")])
    st.rerun()


def render() -> None:
    client = common.current_client()
    assert client is not None
    chat = current_chat()
    options = pickers(client)
    for index, turn in enumerate(chat.turns):
        show_turn(client, chat, index, turn)
    # Enter sends; a new question while an answer streams stops that answer first (`common.cut_live_answer`).
    question = st.chat_input("Ask about your documents", key="question", submit_mode="submit")
    if question and question.strip():
        try:
            answer(client, chat, question.strip(), options)  # before the sidebar: the question goes out first
        except GatewayError as exc:
            common.show_error(exc)
    sidebar(client, chat)

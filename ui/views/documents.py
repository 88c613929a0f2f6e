"""The documents page: upload files or links with a progress bar per job, list and delete, make collections."""

from __future__ import annotations

import time

import streamlit as st

from ui import state
from ui.client import GatewayClient, GatewayError
from ui.views import common

POLL_S = 0.3
JOB_WAIT_S = 1800.0


def follow_jobs(client: GatewayClient, jobs: list[dict[str, str]]) -> None:
    """One progress bar per job, updated until each one succeeded, was skipped or failed (with its reason)."""
    bars = {j["job_id"]: st.progress(0.0, text=f"{j['source']}: {j['status']}") for j in jobs}
    pending = set(bars)
    deadline = time.monotonic() + JOB_WAIT_S
    while pending and time.monotonic() < deadline:
        for job_id in sorted(pending):
            job = client.job(job_id)
            fraction, label = state.job_progress(job)
            bars[job_id].progress(fraction, text=label)
            if job["status"] in state.FINISHED:
                pending.discard(job_id)
                if job["status"] == "failed":
                    st.error(label, icon=":material/error:")
        if pending:
            time.sleep(POLL_S)
    if not pending:
        st.success("All documents are in.", icon=":material/check_circle:")


def upload(client: GatewayClient, writable: list[str]) -> None:
    st.subheader("Add documents")
    if not writable:
        st.info("You may not write to any collection yet: create one below.")
        return
    collection = st.selectbox("Into collection", writable, key="ingest-collection")
    files = st.file_uploader(
        "Files",
        accept_multiple_files=True,
        key="files",
        type=["txt", "md", "html", "htm", "pdf", "docx", "csv", "json", "jsonl"],
    )
    links = st.text_area("Links (one per line)", key="links", placeholder="https://...")
    if st.button("Add", type="primary", key="ingest", icon=":material/upload:"):
        urls = [line.strip() for line in links.splitlines() if line.strip()]
        parts = [(f.name, f.getvalue(), f.type or "application/octet-stream") for f in files or []]
        if not parts and not urls:
            st.warning("Choose files or enter links first.")
            return
        try:
            jobs = client.ingest(collection, parts, urls)
        except GatewayError as exc:
            common.show_error(exc)
            return
        follow_jobs(client, jobs)
        common.forget(f"documents:{collection}")


def listing(client: GatewayClient, collections: list[dict[str, object]]) -> None:
    st.subheader("Documents")
    names = [str(c["name"]) for c in collections]
    if not names:
        st.info("No collections you may read.")
        return
    name = st.selectbox("Collection", names, key="list-collection")
    writable = next(bool(c["writable"]) for c in collections if c["name"] == name)
    docs = common.cached(f"documents:{name}", 10, lambda: client.documents(name))
    if not docs:
        st.caption("No documents in this collection.")
    for doc in docs:
        left, right = st.columns([4, 1])
        left.markdown(f"**{doc.get('source', doc.get('doc_id'))}** · {doc.get('chunks', '?')} chunks")
        if writable and right.button("Delete", key=f"del-{doc['doc_id']}", icon=":material/delete:"):
            client.delete_document(name, doc["doc_id"])
            common.forget(f"documents:{name}")
            st.rerun()


def new_collection(client: GatewayClient) -> None:
    with st.expander("New collection", icon=":material/create_new_folder:"):
        name = st.text_input("Name", key="new-coll-name", help="Letters, digits, '_', '-', '.'")
        choices = ["private", "shared"] if client.is_admin else ["private"]
        visibility = st.radio("Who may read it", choices, key="new-coll-vis", horizontal=True)
        if st.button("Create", key="new-coll"):
            try:
                client.create_collection(name.strip(), visibility)
            except GatewayError as exc:
                common.show_error(exc)
                return
            common.forget("collections")
            st.rerun()


def render() -> None:
    client = common.current_client()
    assert client is not None
    st.title("Documents")
    collections = common.cached("collections", 30, client.collections)
    upload(client, [str(c["name"]) for c in collections if c["writable"]])
    listing(client, collections)
    new_collection(client)

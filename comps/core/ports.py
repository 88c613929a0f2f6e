"""Each service's default port (OPEA's), declared once: the services' settings, the gateway's default URLs of
the services it calls and the local mesh (`chatqna up`) read them here."""

from __future__ import annotations

PORTS: dict[str, int] = {
    "embedding": 6000,
    "retriever": 7000,
    "reranker": 8000,
    "llm": 9000,
    "dataprep": 6007,
    "chathistory": 6012,
    "prompts": 6018,
    "gateway": 8888,
    "ui": 8501,  # the Streamlit chat UI (Streamlit's own default)
}


def local_url(service: str) -> str:
    """The service's default URL on this machine."""
    return f"http://127.0.0.1:{PORTS[service]}"

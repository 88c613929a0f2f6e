"""``python -m comps.llm``: the LLM service on port 9000 (settings: LLM_*)."""

from __future__ import annotations

from fastapi import FastAPI

from comps.core.app import create_app
from comps.core.backends import load_backend, run_service
from comps.llm.backends import REGISTRY
from comps.llm.router import make_router
from comps.llm.service import ChatService
from comps.llm.settings import LLMSettings


def build_app(settings: LLMSettings) -> FastAPI:
    backend_cls = load_backend("llm", REGISTRY, settings.backend, "LLM_BACKEND")
    service = ChatService(settings.parallel, settings.max_queue)
    return create_app(
        settings,
        backend=backend_cls(settings),
        routers=[make_router(service)],
        title="ChatQnA LLM",
        ready_details=lambda: {"queue": service.queue.snapshot()},
    )


if __name__ == "__main__":
    run_service(LLMSettings, build_app)

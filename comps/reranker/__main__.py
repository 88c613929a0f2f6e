"""``python -m comps.reranker``: the reranker service (port 8000)."""

from comps.core.backends import run_service
from comps.reranker.router import build_app
from comps.reranker.settings import RerankerSettings

if __name__ == "__main__":
    run_service(RerankerSettings, build_app)

"""``python -m comps.retriever``: the retriever service (port 7000)."""

from comps.core.backends import run_service
from comps.retriever.router import build_app
from comps.retriever.settings import RetrieverSettings

if __name__ == "__main__":
    run_service(RetrieverSettings, build_app)

"""``python -m comps.embedding``: the embedding service (port 6000)."""

from comps.core.backends import run_service
from comps.embedding.router import build_app
from comps.embedding.settings import EmbeddingSettings

if __name__ == "__main__":
    run_service(EmbeddingSettings, build_app)

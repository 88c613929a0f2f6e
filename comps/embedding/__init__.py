"""Embedding service: OpenAI ``POST /v1/embeddings`` and TEI ``POST /embed`` over one backend (port 6000)."""

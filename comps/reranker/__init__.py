"""Reranker service: TEI ``POST /rerank`` and OPEA ``POST /v1/reranking`` over one backend (port 8000)."""

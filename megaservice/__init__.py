"""The ChatQnA gateway (port 8888): a typed DAG orchestrator over the embedding, retriever, reranker and
LLM services, answering OpenAI chat requests with the passages it used as ``sources``."""

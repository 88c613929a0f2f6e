"""Dataprep: documents and URLs in, chunks with embeddings into the vector store, as jobs."""

"""The Redis vector store shared by the retriever (reads) and dataprep (writes): one schema, one place."""

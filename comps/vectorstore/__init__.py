"""The vector store shared by the retriever (reads) and dataprep (writes): a protocol (`protocol`), two stores
(`redis_store`, `pgvector_store`), chosen by `settings.VectorStoreSettings.vectorstore_backend` (`stores`)."""

"""The retriever service (port 7000): finds the chunks of a collection that answer a query."""

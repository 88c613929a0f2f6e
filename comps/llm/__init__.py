"""The LLM service: OpenAI chat completions over llama.cpp (batched, in-process) or a remote server."""

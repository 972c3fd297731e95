"""LLM calls: the litellm client, model prices and the runner (cache, retries, budget, concurrency)."""

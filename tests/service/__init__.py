"""The service: the response cache, API keys and rate limits."""

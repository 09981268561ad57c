"""The X-Cache header of an inference answer, from what the service reports of each image."""

from __future__ import annotations

from ..lease import cache_state


def cache_header(results: list) -> dict:
    """X-Cache: hit, miss or partial (some images of a batch from the cache); none with the cache
    off or nothing answered."""
    state = cache_state(results)
    return {"X-Cache": state} if state else {}

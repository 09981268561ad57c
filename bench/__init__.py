"""`make bench` (python -m bench.run): inferd against the in-process limit and the reference design.

Bench-only code: the daemon never imports this package, and its extra dependencies (FastAPI,
uvicorn, python-multipart for the reference design) come from setup.cfg's `bench` extra.
"""

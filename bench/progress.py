"""Progress lines on stderr while the benchmark runs, stamped with the seconds since it started."""

from __future__ import annotations

import sys
import time

STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)

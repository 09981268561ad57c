"""The limits and timeouts the HTTP layer works under: one frozen value, replaced whole on reload."""

from __future__ import annotations

from dataclasses import dataclass

READ_SIZE = 64 * 1024  # bytes asked of a socket at once, for heads and bodies alike


@dataclass(frozen=True)
class HttpSettings:
    max_request_line: int = 8192
    max_header_bytes: int = 16384
    max_header_count: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    idle_timeout: float = 15.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    min_body_rate: int = 16384
    request_timeout: float = 30.0  # one socket read or write
    access_log: bool = True

    @classmethod
    def from_config(cls, config) -> "HttpSettings":
        limits = config.limits
        return cls(max_request_line=limits.max_request_line, max_header_bytes=limits.max_header_bytes,
                   max_header_count=limits.max_header_count, max_body_bytes=limits.max_body_bytes,
                   idle_timeout=limits.idle_timeout, header_timeout=limits.header_timeout,
                   body_timeout=limits.body_timeout, min_body_rate=limits.min_body_rate,
                   request_timeout=config.server.request_timeout, access_log=config.logging.access_log)

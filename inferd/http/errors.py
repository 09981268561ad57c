"""Every error the HTTP layer answers with, each carrying its status (`http_status`).

A lower layer raises one of these, or any exception of its own that carries `http_status`;
`responses.error_response` turns it into a response in one place.
"""

from __future__ import annotations


class HTTPError(Exception):
    """An error answer chosen by a route: status, message for the client, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.http_status = status
        self.headers = headers or {}


class ProtocolError(ValueError):
    """The request cannot be read as HTTP/1.1; the connection must be closed after the answer."""

    http_status = 400


class RequestLineTooLong(ProtocolError):
    http_status = 414


class HeadersTooLarge(ProtocolError):
    http_status = 431


class LengthRequired(ValueError):
    """A body is needed and the head declares none; the framing itself is fine."""

    http_status = 411


class BodyTooLarge(ProtocolError):
    http_status = 413


class ExpectationFailed(ProtocolError):
    http_status = 417


class ClientDisconnected(ConnectionError):
    """The client closed or reset the connection while we were reading; nobody to answer."""


class RequestTimeout(TimeoutError):
    """The client did not send its request (head or body) in the time allowed."""

    http_status = 408

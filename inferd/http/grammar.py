"""The field-line rules of RFC 9110 §5 shared by request heads and multipart part headers, and the
values of the header fields more than one route reads (media types, bearer credentials)."""

from __future__ import annotations

import re

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB (RFC 9110 §5.5): never valid in a field value.
CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class FieldLineError(ValueError):
    """One field line breaks the grammar; the message says how."""


def field_line(line: str, what: str = "header") -> tuple[str, str]:
    """(lower-cased name, value without surrounding blanks) of one field line.

    Raises FieldLineError for obs-fold (RFC 9112 §5.2), a name that is not a token or has
    whitespace before its colon, and control characters anywhere in the line.
    """
    if line[:1] in (" ", "\t"):
        raise FieldLineError(f"folded {what} line (obs-fold, RFC 9112 §5.2)")
    if CTL.search(line):
        raise FieldLineError(f"control character in a {what} line")
    name, colon, value = line.partition(":")
    if not colon or not TOKEN.fullmatch(name):
        raise FieldLineError(f"malformed {what} line {line[:60]!r}")
    return name.lower(), value.strip(" \t")


def media_type(content_type: str) -> str:
    """The lower-cased type/subtype of a Content-Type value, without its parameters (RFC 9110 §8.3.1)."""
    return content_type.split(";", 1)[0].strip().lower()


def bearer(authorization: str | None) -> str | None:
    """The credentials of "Authorization: Bearer <credentials>" (RFC 6750 §2.1, the scheme in any
    case); None for another scheme or none."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None

"""The one rule for the names operators give things: models (their directories) and API keys.
Such names become URL segments, metric label values and log words, so they are short and plain."""

from __future__ import annotations

import ipaddress
import re

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
RULE = "letters, digits, '.', '_', '-'; at most 64"
INVALID = "(invalid)"  # the label value standing for any name that breaks the rule


def is_name(text: str) -> bool:
    return NAME.match(text) is not None


def version_order(version: str) -> tuple:
    """Sort key of version names: numbers by value (2 before 10), then any others by text."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def label(text: str) -> str:
    """`text` as a metric label value: itself when it is a name, INVALID otherwise, so that a name
    the daemon refuses never becomes a series of its own."""
    return text if is_name(text) else INVALID


def client_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as the socket gave it: its IPv6 scope (%eth0) left out, an IPv4 address
    mapped into IPv6 taken as that IPv4 address; None for text that is not an address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    mapped = address.ipv4_mapped if address.version == 6 else None
    return mapped or address

"""The text views of a metrics snapshot, and which one a scraper asked for: pure functions.

``format_text`` (Prometheus text 0.0.4) and ``format_openmetrics`` (OpenMetrics 1.0.0) turn the
FamilySnapshots of ``Registry.collect()`` into text; ``negotiate`` reads ``?format=`` and the
Accept header (RFC 9110 §12.5.1); ``render`` returns the content type and body of one view.
"""

from __future__ import annotations

import json
from typing import Iterable

from .families import FamilySnapshot, Registry, format_value

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CONTENT_TYPE_JSON = "application/json"
KINDS = ("json", "prometheus", "openmetrics")


def _escape_label_value(value: str) -> str:
    # Both formats: backslash, double quote and line feed are escaped in label values.
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help_text(text: str) -> str:
    # Prometheus 0.0.4 escapes only backslash and line feed in HELP; the Go parser rejects \".
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_help_openmetrics(text: str) -> str:
    # OpenMetrics HELP is an escaped-string: double quote is escaped too.
    return _escape_label_value(text)


def _sample_lines(family: FamilySnapshot, out: list[str]) -> None:
    for sample in family.samples:
        if sample.labels:
            labels = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in sample.labels)
            out.append(f"{family.name}{sample.suffix}{{{labels}}} {format_value(sample.value)}\n")
        else:
            out.append(f"{family.name}{sample.suffix} {format_value(sample.value)}\n")


def format_text(families: Iterable[FamilySnapshot]) -> str:
    """Prometheus text 0.0.4: a counter's HELP/TYPE name carries ``_total``, as its samples do."""
    out: list[str] = []
    for family in families:
        name = family.name + "_total" if family.type == "counter" else family.name
        out.append(f"# HELP {name} {_escape_help_text(family.documentation)}\n")
        out.append(f"# TYPE {name} {family.type}\n")
        _sample_lines(family, out)
    return "".join(out)


def format_openmetrics(families: Iterable[FamilySnapshot]) -> str:
    """OpenMetrics 1.0.0: the family name has no ``_total``; ``# UNIT`` when a unit is declared."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_escape_help_openmetrics(family.documentation)}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        if family.unit:
            out.append(f"# UNIT {family.name} {family.unit}\n")
        _sample_lines(family, out)
    out.append("# EOF\n")
    return "".join(out)


_FORMATS = {"json": "json", "prometheus": "prometheus", "openmetrics": "openmetrics"}
# (kind, type, subtype, versions we serve under that media type; None = no version parameter)
_OFFERS = (
    ("json", "application", "json", None),
    ("openmetrics", "application", "openmetrics-text", {"1.0.0", "0.0.1"}),
    ("prometheus", "text", "plain", {"0.0.4", "1.0.0"}),
)
# On a full tie (same q, same specificity, same position) prefer JSON: `*/*` and browsers get it.
_SERVER_PREFERENCE = {"json": 2, "openmetrics": 1, "prometheus": 0}


def _parse_accept(accept: str) -> list[tuple[str, str, dict[str, str], float]]:
    ranges = []
    for item in accept.split(","):
        mime, *params = item.split(";")
        type_, _, subtype = mime.strip().lower().partition("/")
        if not type_ or not subtype:
            continue  # malformed range: ignore it rather than fail the scrape
        options = {}
        for param in params:
            key, _, value = param.partition("=")
            options[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(options.pop("q", "1"))
        except ValueError:
            continue
        if not 0 <= q <= 1:
            continue
        ranges.append((type_, subtype, options, q))
    return ranges


def negotiate(accept: str | None, fmt: str | None) -> str:
    """Choose "json", "prometheus" or "openmetrics" for GET /metrics.

    ``fmt`` (the ?format= value) wins when given; an unknown value raises ValueError (the server
    answers 400). Otherwise the Accept header decides per RFC 9110 §12.5.1: the highest q wins,
    q=0 excludes, the most specific matching range sets an offer's q; ties go to the more specific
    range, then the range listed first, then JSON. A missing header, or one that accepts none of the
    three, gives JSON (the view for people; Prometheus always sends Accept).
    """
    if fmt is not None:
        kind = _FORMATS.get(fmt.strip().lower())
        if kind is None:
            raise ValueError(f"unknown format {fmt!r}; expected json, prometheus or openmetrics")
        return kind
    if not accept or not accept.strip():
        return "json"
    ranges = _parse_accept(accept)
    best = None
    for kind, type_, subtype, versions in _OFFERS:
        match = None  # (specificity, -position, q) of the most specific matching range
        for position, (rtype, rsubtype, options, q) in enumerate(ranges):
            if rtype == "*" and rsubtype == "*":
                specificity = 0
            elif rtype == type_ and rsubtype == "*":
                specificity = 1
            elif rtype == type_ and rsubtype == subtype:
                version = options.get("version")
                if version is not None and (versions is None or version not in versions):
                    continue  # a version we do not serve
                specificity = 2
            else:
                continue
            if match is None or (specificity, -position) > match[:2]:
                match = (specificity, -position, q)
        if match is None or match[2] <= 0:
            continue
        key = (match[2], match[0], match[1], _SERVER_PREFERENCE[kind])
        if best is None or key > best[0]:
            best = (key, kind)
    return best[1] if best else "json"


def render(kind: str, registry: Registry, json_view: dict | None = None) -> tuple[str, bytes]:
    """(content type, body) of one view: the registry as text or OpenMetrics, or `json_view`
    (the caller's dict for people) as JSON. Raises ValueError for an unknown kind, TypeError for
    JSON without a view."""
    if kind == "prometheus":
        return CONTENT_TYPE_TEXT, format_text(registry.collect()).encode("utf-8")
    if kind == "openmetrics":
        return CONTENT_TYPE_OPENMETRICS, format_openmetrics(registry.collect()).encode("utf-8")
    if kind == "json":
        if json_view is None:
            raise TypeError("the JSON view needs the dict for people (InferdMetrics.snapshot_json)")
        return CONTENT_TYPE_JSON, json.dumps(json_view, allow_nan=False).encode("utf-8")
    raise ValueError(f"unknown metrics kind {kind!r}")

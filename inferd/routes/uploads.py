"""Images out of a request body: multipart file parts, or a raw image/* body; and ?top_k=."""

from __future__ import annotations

from dataclasses import dataclass

from ..http import multipart
from ..http.errors import HTTPError
from ..http.grammar import media_type


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class UploadForm:
    """How a request's body carries its images, read off its Content-Type once, before the body."""

    boundary: str | None  # a multipart/form-data body's boundary; None: the body is one image


def upload_form(content_type: str) -> UploadForm:
    """The form of a Content-Type inferd takes images in; HTTPError 415 otherwise, and
    MultipartError (400) for a multipart type without a valid boundary."""
    mime = media_type(content_type)
    if mime == "multipart/form-data":
        return UploadForm(multipart.parse_boundary(content_type))
    if mime.startswith("image/") or mime == "application/octet-stream":
        return UploadForm(None)
    raise HTTPError(415, "expected multipart/form-data or an image/* body")


def uploads(form: UploadForm, body: bytes, limits, field_names: tuple[str, ...]) -> list[Upload]:
    """The images of a body: the file parts whose field is one of `field_names` (other fields are
    ignored), or the whole body. Raises MultipartError (400/413) for a malformed or oversized form,
    HTTPError 413 past max_files_per_batch."""
    if form.boundary is None:
        return [Upload(None, body)]
    found = []
    for part in multipart.iter_parts(
        [body], form.boundary, max_body_bytes=limits.max_body_bytes, max_parts=limits.max_parts,
        max_header_bytes=limits.max_part_header_bytes, max_part_bytes=limits.max_body_bytes,
    ):
        if part.name not in field_names:
            continue
        if len(found) == limits.max_files_per_batch:
            raise HTTPError(413, f"too many files: the limit is {limits.max_files_per_batch} per request")
        found.append(Upload(part.filename, part.data))
    return found


def parse_top_k(query: dict[str, list[str]], default: int, classes: int) -> int:
    """?top_k=N in 1..classes (ASCII digits only), or `default`; HTTPError 400 otherwise."""
    values = query.get("top_k")
    if not values:
        return min(default, classes)
    text = values[-1]
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise HTTPError(400, "top_k must be an integer")
    k = int(text)
    if not 1 <= k <= classes:
        raise HTTPError(400, f"top_k must be between 1 and {classes}")
    return k

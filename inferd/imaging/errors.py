"""Why an image was refused, each with its HTTP status."""

from __future__ import annotations


class ImageError(ValueError):
    """The bytes are not an image we can classify."""

    http_status = 400


class UnsupportedImage(ImageError):
    http_status = 415


class ImageTooLarge(ImageError):
    http_status = 413


class DecodeBusy(ImageError):
    """Other images hold the decode budget; the client should retry shortly."""

    http_status = 503
    headers = {"Retry-After": "1"}

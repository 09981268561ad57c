"""Image bytes -> float32 tensor, as a chain of small pure functions driven by the model manifest.

open (format allow-list, pixel limit before any pixel is decoded; a JPEG's completeness checked)
-> decode (JPEG draft mode) -> orient (EXIF), convert to RGB, and resize the shorter side and
centre-crop in one resample -> normalise -> layout.

A large image is never copied whole: only the region the model sees (its centre, with a margin
wider than the filter's support) is cropped, oriented and converted, so a 16-bit or palette image
costs its decoded size plus a copy of its centre, never float copies of the whole. Images whose
RGB copy is below WHOLE_BELOW are oriented and converted whole, in the reference's order, bit for
bit; above it the result is within a few levels of that (float rounding of the shifted box).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct

import numpy as np
from PIL import Image

from . import jpeg
from ..manifest import INTERPOLATIONS, InputSpec
from .budget import DecodeBudget
from .errors import DecodeBusy, ImageError, ImageTooLarge, UnsupportedImage

__all__ = ["DecodeBusy", "ImageError", "ImageTooLarge", "UnsupportedImage", "decode_cost", "open_image",
           "to_tensor"]

FILTERS = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}
FILTER_SUPPORT = {"nearest": 1, "bilinear": 1, "bicubic": 2, "lanczos": 3}  # pixels, as Pillow's filters have it
# Pillow's transposes that make a stored image upright, by EXIF orientation (as ImageOps.exif_transpose).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Leading bytes of the formats Pillow reads: a file that starts like one is that format, broken.
SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a"),
              "BMP": (b"BM",), "TIFF": (b"II*\x00", b"MM\x00*"), "WEBP": (b"RIFF",)}

# Images whose RGB copy is smaller are oriented and converted whole (the reference's order, bit for
# bit); larger ones only in the region the model sees (values within a few levels of the whole).
WHOLE_BELOW = 16 * 1024 * 1024



def take_over_pixel_limit() -> None:
    """Turn Pillow's process-wide bomb check off, for the daemon: [limits] max_image_pixels,
    checked from the header before any pixel is decoded, takes its place (Pillow's would refuse
    every image above 179 M pixels, and warn above 89 M, whatever the configuration allows).
    Where it stays on (a tool calling to_tensor), its refusals are 413 as ours are."""
    Image.MAX_IMAGE_PIXELS = None


def to_tensor(data: bytes, spec: InputSpec, *, max_pixels: int, formats: frozenset[str],
              budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode `data` and return the model input for one image: float32, (3,S,S) or (S,S,3).

    Raises UnsupportedImage (415), ImageTooLarge (413), DecodeBusy (503) or ImageError (400).
    """
    image = _draft(open_image(data, max_pixels=max_pixels, formats=formats), spec.resize)
    with budget.reserve(decode_cost(image, spec.resize)) if budget is not None else contextlib.nullcontext():
        image = _guarded(model_view, decode(image, spec.resize), spec)
    return normalise(image, spec)


def open_image(data: bytes, *, max_pixels: int, formats: frozenset[str]) -> Image.Image:
    """Read the header only: format and size are checked before any pixel is decoded."""
    if not data:
        raise ImageError("empty image")
    if data.startswith(SIGNATURES["JPEG"]) and "JPEG" in formats:
        data = _guarded(jpeg.for_decoder, data)
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(formats))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_reason(exc)) from None
    except Image.UnidentifiedImageError:
        if any(data.startswith(SIGNATURES[name]) for name in formats if name in SIGNATURES):
            raise ImageError("cannot read image header: the file is cut short or corrupt") from None
        raise UnsupportedImage(f"not an image in an accepted format ({', '.join(sorted(formats))})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"cannot read image header: {_reason(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    return image


def decode_cost(image: Image.Image, resize: int) -> int:
    """Bytes that decoding `image` (opened, JPEG draft applied) takes at most: the decoded image as
    Pillow stores it, plus, for modes other than RGB and L or an image stored rotated, a copy of its
    centre square and that square converted (model_view)."""
    width, height = image.size
    per_pixel = _bytes_per_pixel(image.mode)
    side = min(width, height)
    if image.mode in ("RGB", "L"):
        extra = 2 * per_pixel if _orientation(image) != 1 else 0
    else:
        extra = per_pixel + (16 if image.mode in ("I", "F") else 4)
    return width * height * per_pixel + side * side * extra + 16 * (4 * resize) ** 2


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4  # Pillow keeps RGB, LA, CMYK... in 4 bytes


def decode(image: Image.Image, resize: int) -> Image.Image:
    """Decode the pixels (a JPEG at the smallest DCT scale that keeps its shorter side at least
    twice `resize`, which costs no visible accuracy and saves most of the time). Raises ImageError
    (400) for data that ends early or is corrupt."""
    _draft(image, resize)
    _guarded(image.load)
    return image


def _draft(image: Image.Image, resize: int) -> Image.Image:
    if image.format in ("JPEG", "MPO"):  # phones write MPO: JPEG with extra frames
        image.draft("RGB", _draft_request(image.size, 2 * resize))
    return image


def _draft_request(size: tuple[int, int], min_short_side: int) -> tuple[int, int]:
    width, height = size
    factor = min_short_side / min(width, height)
    if factor >= 1:
        return size
    return math.ceil(width * factor), math.ceil(height * factor)


def model_view(image: Image.Image, spec: InputSpec) -> Image.Image:
    """The decoded image as the model sees it: upright RGB, shorter side resized, centre-cropped."""
    orientation = _orientation(image)
    box = _centre_box(_upright_size(image.size, orientation), spec)
    region = image
    if image.width * image.height * 4 <= WHOLE_BELOW:
        region = _to_rgb(image.transpose(ORIENTATIONS[orientation]) if orientation in ORIENTATIONS else image)
    elif orientation != 1 or image.mode not in ("RGB", "L"):
        region, box = _upright_region(image, box, orientation, spec)
    region = region.resize((spec.size, spec.size), FILTERS[spec.interpolation], box=box)
    return region.convert("RGB") if region.mode != "RGB" else region


def _upright_region(image: Image.Image, box, orientation: int, spec: InputSpec):
    """(the part of `image` a resample of the upright-frame `box` reads, cropped, upright and in
    RGB or L; `box` in that part's coordinates). The crop keeps a margin wider than the filter."""
    stored = _stored_box(box, image.size, orientation)
    margin = math.ceil((FILTER_SUPPORT[spec.interpolation] + 1) * max(1.0, (box[2] - box[0]) / spec.size)) + 4
    rect = (max(0, math.floor(stored[0]) - margin), max(0, math.floor(stored[1]) - margin),
            min(image.width, math.ceil(stored[2]) + margin), min(image.height, math.ceil(stored[3]) + margin))
    region = image if rect == (0, 0, image.width, image.height) else image.crop(rect)
    if orientation in ORIENTATIONS:
        region = region.transpose(ORIENTATIONS[orientation])
    if region.mode not in ("RGB", "L"):
        region = _to_rgb(region)
    x0, y0 = _upright_rect(rect, image.size, orientation)[:2]
    return region, (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        return 1  # a broken EXIF block is not a broken image


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _centre_box(size: tuple[int, int], spec: InputSpec) -> tuple[float, float, float, float]:
    """The source box of "shorter side to `resize`, centre crop `size`" in an image of `size`."""
    width, height = size
    scale = spec.resize / min(width, height)
    left = (round(width * scale) - spec.size) / 2
    top = (round(height * scale) - spec.size) / 2
    return left / scale, top / scale, (left + spec.size) / scale, (top + spec.size) / scale


def _stored_box(box, stored: tuple[int, int], orientation: int) -> tuple[float, float, float, float]:
    """An upright-frame box in the frame the pixels are stored in (the inverse of ORIENTATIONS)."""
    left, top, right, bottom = box
    width, height = _upright_size(stored, orientation)  # the upright frame's size
    return {
        1: (left, top, right, bottom), 2: (width - right, top, width - left, bottom),
        3: (width - right, height - bottom, width - left, height - top),
        4: (left, height - bottom, right, height - top), 5: (top, left, bottom, right),
        6: (top, width - right, bottom, width - left), 7: (height - bottom, width - right, height - top, width - left),
        8: (height - bottom, left, height - top, right),
    }.get(orientation, (left, top, right, bottom))


def _upright_rect(rect, stored: tuple[int, int], orientation: int) -> tuple[int, int, int, int]:
    """A stored-frame rectangle in the upright frame (what ORIENTATIONS does to it)."""
    x0, y0, x1, y1 = rect
    width, height = stored
    return {
        2: (width - x1, y0, width - x0, y1), 3: (width - x1, height - y1, width - x0, height - y0),
        4: (x0, height - y1, x1, height - y0), 5: (y0, x0, y1, x1), 6: (height - y1, x0, height - y0, x1),
        7: (height - y1, width - x1, height - y0, width - x0), 8: (y0, width - x1, y1, width - x0),
    }.get(orientation, rect)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, or L left as it is (resampling grey and replicating it after is the same)."""
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L"):
        # The high byte of each 16-bit sample (Pillow's convert("L") clips instead of scaling),
        # picked out of a byte view: no 16-bit or float temporaries.
        grey = np.asarray(image)
        big_endian = grey.dtype.byteorder == ">" or (grey.dtype.byteorder == "=" and not np.little_endian)
        high = np.ascontiguousarray(grey.view(np.uint8)[:, 0 if big_endian else 1::2])
        del grey  # before the next copy: a 64-megapixel image is 128 MB here
        image = Image.fromarray(high)
    elif image.mode == "I":
        grey = np.asarray(image)
        peak = max(int(grey.max()), 1)
        image = Image.fromarray((np.clip(grey, 0, peak) * (255.0 / peak)).astype(np.uint8))
    return image if image.mode == "L" else image.convert("RGB")


def _guarded(step, *args):
    """Run a decoding step; Pillow's and libjpeg's failures become ImageError (400), a bomb 413."""
    try:
        return step(*args)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_reason(exc)) from None
    except jpeg.IncompleteJpeg as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise ImageError(f"cannot decode image: {_reason(exc)}") from None


def normalise(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """RGB image -> C-contiguous float32 tensor in the manifest's layout, without the batch axis."""
    scale, bias = spec.scale_and_bias()
    pixels = np.asarray(image)  # uint8 (S, S, 3), a view of Pillow's bytes
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
        scale, bias = scale[:, None, None], bias[:, None, None]
    # One pass from uint8 straight into the output layout, then the bias in place: the same
    # float32 arithmetic as before, 15x faster than converting, scaling and copying in steps.
    tensor = np.multiply(pixels, scale, dtype=np.float32, order="C")
    tensor += bias
    return tensor


def _reason(exc: BaseException) -> str:
    """A short, path-free reason for a client."""
    text = str(exc).split("\n", 1)[0]
    return text[:200] or type(exc).__name__


"""EXIF orientation on large photos (inferd/imaging/preprocess.py): past WHOLE_BELOW only the region
the model sees is turned upright, through the box arithmetic of every orientation. `make
coverage` showed that path unreached (issue 14): phones write orientations 3, 6 and 8 on every
portrait or upside-down photo, and their photos are large."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inferd.config import KNOWN_FORMATS
from inferd.imaging import preprocess
from tests.models.test_preprocess import LITE0, reference

# Each orientation's transpose undoes itself, except 6 and 8, which undo each other.
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def upright_photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour everywhere and a dark block top-left, so any wrong turn or flip shows."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 120.0)], -1)
    rgb[height // 4: height // 2, width // 4: width // 2] = 10
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def stored_with_exif(upright: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    upright.transpose(STORED[orientation]).save(buffer, "PNG", exif=exif)
    return buffer.getvalue()


def tensor(data: bytes) -> np.ndarray:
    return preprocess.to_tensor(data, LITE0, max_pixels=64_000_000, formats=KNOWN_FORMATS)


@pytest.mark.parametrize("orientation", sorted(STORED))
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_large_photo_is_turned_upright_like_a_small_one(orientation, mode):
    upright = upright_photo(2400, 1800, mode)
    assert upright.width * upright.height * 4 > preprocess.WHOLE_BELOW  # the region path
    got = tensor(stored_with_exif(upright, orientation))
    expected = reference(upright, LITE0)
    assert float(np.abs(got - expected).mean()) < 0.02, orientation


def test_thirty_two_bit_grey_is_scaled_to_its_peak():
    grey = Image.fromarray((np.arange(256 * 256, dtype=np.int32).reshape(256, 256) % 1000) * 1000, "I")
    buffer = io.BytesIO()
    grey.save(buffer, "TIFF")
    result = tensor(buffer.getvalue())
    assert result.shape == (3, 224, 224) and result.min() >= -1.0 and result.max() <= 1.0
    assert float(result.max() - result.min()) > 1.5  # the whole 0..peak range is used, not clipped

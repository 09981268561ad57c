"""The two benchmark images, made from scikit-image's offline samples (no download).

small.jpg: the chelsea photo as it ships, 451x300, JPEG quality 90.
photo-12mp.jpg: the coffee photo upscaled to 4000x3000 (a 12-megapixel phone photo's size) with a
little sensor-like noise, so the file is as dense as a phone's (~1.6 MB), JPEG quality 90.
"""

from __future__ import annotations

import io
from pathlib import Path

PHOTO_SIZE = (4000, 3000)


def _jpeg(image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def small_jpeg() -> bytes:
    """~450x300 JPEG of a cat."""
    from PIL import Image
    from skimage import data
    return _jpeg(Image.fromarray(data.chelsea()))


def phone_photo() -> bytes:
    """4000x3000 JPEG: the same bytes on every run (fixed noise seed)."""
    import numpy as np
    from PIL import Image
    from skimage import data
    upscaled = np.asarray(Image.fromarray(data.coffee()).resize(PHOTO_SIZE, Image.Resampling.BICUBIC), np.int16)
    noise = np.random.default_rng(0).normal(0.0, 3.0, upscaled.shape).astype(np.int16)
    return _jpeg(Image.fromarray(np.clip(upscaled + noise, 0, 255).astype(np.uint8)))


def write_images(directory: Path) -> dict[str, Path]:
    """{label: path} of both images written under `directory` (rewritten only when missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for label, name, make in (("small 451x300", "small.jpg", small_jpeg),
                              ("photo 12MP", "photo-12mp.jpg", phone_photo)):
        path = directory / name
        if not path.is_file():
            path.write_bytes(make())
        made[label] = path
    return made

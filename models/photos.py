"""Photos that ship on PyPI, for calibrating the int8 models and for checking them: scikit-image's.

scikit-image's wheel carries about twenty sample images (skimage.data; no download). They are
split by photo, so that no photo both calibrates and judges: 7 calibrate (4 variants each, 28
images) and 13 others give the check set (8 variants each, 104 images). The variants are crops,
flips, a rotation, a half-size rescale and a re-encode at JPEG quality 75, so the check set is
varied but small, and all of it comes from 13 scenes; say so wherever its figure is quoted.
Greyscale samples are converted to RGB, the RGBA logo is flattened onto white.
"""

from __future__ import annotations

import io

CALIBRATION = ("astronaut", "camera", "coins", "grass", "hubble_deep_field", "page", "retina")
CHECK = ("chelsea", "coffee", "rocket", "brick", "cell", "clock", "gravel", "immunohistochemistry", "moon",
         "text", "logo", "motorcycle_left", "motorcycle_right")


def _sample(name: str):
    """A scikit-image sample as an RGB PIL image."""
    from PIL import Image
    from skimage import data
    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        array = left if name.endswith("left") else right
    else:
        array = getattr(data, name)()
    image = Image.fromarray(array)
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


def _variants(image, count: int) -> list:
    """The first `count` of eight deterministic variants of one photo."""
    from PIL import Image
    width, height = image.size
    variants = [
        image,
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        image.crop((0, 0, width * 2 // 3, height * 2 // 3)),
        image.crop((width // 3, height // 3, width, height)),
        image.crop((width // 4, height // 4, width * 3 // 4, height * 3 // 4)),
        image.transpose(Image.Transpose.ROTATE_90),
        image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BILINEAR),
        Image.open(io.BytesIO(_jpeg(image, 75))),
    ]
    return variants[:count]


def _jpeg(image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def calibration_jpegs() -> list[bytes]:
    """28 JPEGs (quality 90): 4 variants of each calibration photo."""
    return [_jpeg(variant) for name in CALIBRATION for variant in _variants(_sample(name), 4)]


def check_jpegs() -> list[tuple[str, bytes]]:
    """104 (name, JPEG) pairs: 8 variants of each of the 13 check photos."""
    return [(f"{name}-{number}", _jpeg(variant)) for name in CHECK
            for number, variant in enumerate(_variants(_sample(name), 8))]

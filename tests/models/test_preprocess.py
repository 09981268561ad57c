"""Preprocessing: formats, orientation, modes, limits, and agreement with the reference recipe."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inferd.imaging import preprocess
from inferd.config import KNOWN_FORMATS
from inferd.imaging.preprocess import ImageError, ImageTooLarge, UnsupportedImage
from inferd.manifest import InputSpec

LITE0 = InputSpec(size=224, resize=256, interpolation="bicubic", mean=(127.0,) * 3, std=(128.0,) * 3)
RESNET = InputSpec(size=224, resize=256, interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), value_range=1.0)
LIMIT = 64_000_000


def tensor(data: bytes, spec=LITE0, **kwargs):
    return preprocess.to_tensor(data, spec, max_pixels=kwargs.get("max_pixels", LIMIT),
                                formats=kwargs.get("formats", KNOWN_FORMATS))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width=320, height=240) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 90.0)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def reference(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """torchvision's recipe written out: Resize(shorter side) -> CenterCrop -> normalise, NCHW."""
    width, height = image.size
    scale = spec.resize / min(width, height)
    resized = image.convert("RGB").resize((round(width * scale), round(height * scale)),
                                          preprocess.FILTERS[spec.interpolation])
    left = int(round((resized.width - spec.size) / 2.0))
    top = int(round((resized.height - spec.size) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + spec.size, top + spec.size)), dtype=np.float32)
    crop = crop * (spec.value_range / 255.0)
    normal = (crop - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return normal.transpose(2, 0, 1)


@pytest.mark.parametrize("spec", [LITE0, RESNET], ids=["lite0", "resnet50"])
def test_matches_resize_then_crop_reference(images, spec):
    for name in ("coffee.png", "camera.png"):
        image = Image.open(io.BytesIO(images[name]))
        ours = tensor(images[name], spec)
        theirs = reference(image, spec)
        assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
        spread = float(theirs.max() - theirs.min())
        # One resample over the crop box vs. resize-then-crop: sub-pixel centring differs slightly.
        assert float(np.abs(ours - theirs).mean()) < 0.01 * spread


def test_layout_nhwc_is_the_transpose():
    data = encode(gradient(), "PNG")
    nchw = tensor(data)
    nhwc = tensor(data, InputSpec(**{**LITE0.__dict__, "layout": "NHWC"}))
    assert nhwc.shape == (224, 224, 3)
    assert np.array_equal(nhwc, nchw.transpose(1, 2, 0))


def test_normalisation_uses_the_manifest_not_the_image():
    grey = Image.new("RGB", (300, 300), (127, 127, 127))
    assert np.allclose(tensor(encode(grey, "PNG")), 0.0)
    white = Image.new("RGB", (300, 300), (255, 255, 255))
    assert np.allclose(tensor(encode(white, "PNG")), 1.0)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_three_channels(mode):
    image = gradient().convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(gradient().convert("L"), np.uint16) * 257).astype("<u2"))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    result = tensor(encode(image, fmt))
    assert result.shape == (3, 224, 224)
    assert np.isfinite(result).all()
    assert result.min() >= -1.0 and result.max() <= 1.0


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((256, 256), 32768, "<u2"))
    result = tensor(encode(grey, "TIFF"))
    assert abs(float(result.mean()) - (128 - 127) / 128) < 0.02


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (200, 400), (255, 0, 0))
    tall.paste((0, 0, 255), (0, 0, 200, 200))  # blue on top, red below
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    stored = tall.transpose(Image.Transpose.ROTATE_90)
    result = tensor(encode(stored, "JPEG", exif=exif, quality=95))
    # Upright again: top half blue, bottom half red.
    assert result[2, 10, 112] > 0.9 and result[0, 10, 112] < -0.9
    assert result[0, 213, 112] > 0.9 and result[2, 213, 112] < -0.9


def test_large_jpeg_uses_draft_decoding_and_keeps_the_answer():
    big = gradient(4000, 3000)
    data = encode(big, "JPEG", quality=90)
    image = preprocess.open_image(data, max_pixels=LIMIT, formats=KNOWN_FORMATS)
    decoded = preprocess.decode(image, LITE0.resize)
    assert min(decoded.size) >= 2 * LITE0.resize
    assert decoded.size[0] < 4000  # decoded at a reduced DCT scale
    full = reference(big, LITE0)
    assert float(np.abs(tensor(data) - full).mean()) < 0.02


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode(fmt):
    assert tensor(encode(gradient(), fmt)).shape == (3, 224, 224)


def test_format_outside_the_allow_list_is_415():
    with pytest.raises(UnsupportedImage):
        tensor(encode(gradient(), "PNG"), formats=frozenset({"JPEG"}))
    with pytest.raises(UnsupportedImage):
        tensor(encode(gradient(), "ICO"))


def test_text_is_415_and_empty_is_400():
    with pytest.raises(UnsupportedImage) as caught:
        tensor(b"hello, this is not an image\n")
    assert caught.value.http_status == 415
    with pytest.raises(ImageError) as caught:
        tensor(b"")
    assert caught.value.http_status == 400


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_truncated_image_is_400(fmt):
    data = encode(gradient(), fmt)
    with pytest.raises(ImageError) as caught:
        tensor(data[: len(data) // 2])
    assert caught.value.http_status in (400, 415)


def test_decompression_bomb_is_413_before_decoding():
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")  # a few kB that would decode to 400 MP
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge) as caught:
        tensor(bomb)
    assert caught.value.http_status == 413
    assert "400000000 pixels" in str(caught.value)


def test_pixel_limit_is_the_configured_one():
    with pytest.raises(ImageTooLarge):
        tensor(encode(gradient(), "PNG"), max_pixels=320 * 240 - 1)
    assert tensor(encode(gradient(), "PNG"), max_pixels=320 * 240).shape == (3, 224, 224)


def test_tiny_and_extreme_aspect_images_work():
    assert tensor(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")).shape == (3, 224, 224)
    assert tensor(encode(Image.new("RGB", (5000, 2), (10, 20, 30)), "PNG")).shape == (3, 224, 224)


def test_errors_do_not_leak_object_reprs():
    with pytest.raises(UnsupportedImage) as caught:
        tensor(b"\x00" * 100)
    assert "0x" not in str(caught.value) and "BytesIO" not in str(caught.value)

"""Image bytes to encoder input: every mode to RGB, and a clear error for what is not an image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.images import open_image
from model.images import decode_image, preprocess


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", size, color))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"hello, this is text and not a picture", "not_an_image"),
        (b"%PDF-1.4\n%\xe2\xe3", "unsupported_format"),
        (png()[:60], "corrupt_image"),  # header intact, pixel data cut off
    ],
    ids=["empty", "text", "pdf", "truncated"],
)
def test_bad_bytes_give_a_clear_error(data, code):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.code == code
    assert info.value.message


def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(ImageError) as info:
        decode_image(png((400, 300)), max_pixels=100_000)
    assert info.value.code == "image_too_large"


def test_output_is_inception_input():
    array = decode_image(png())
    assert array.shape == (299, 299, 3) and array.dtype == np.float32
    assert -1.0 <= array.min() and array.max() <= 1.0
    np.testing.assert_allclose(array[150, 150], np.array([200, 30, 30]) / 127.5 - 1, atol=1e-6)


def rgba_on_transparent() -> bytes:
    return encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0)))


def palette_with_transparency() -> bytes:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0] * 256)
    return encode(image, transparency=0)


def sixteen_bit_grey() -> bytes:
    return encode(Image.fromarray(np.full((20, 20), 65535, np.uint16)))


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (20, 20), (0, 0, 0, 0)), "JPEG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 255, 255), (0, 0, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def grey_alpha() -> bytes:
    return encode(Image.new("LA", (20, 20), (0, 0)))


@pytest.mark.parametrize(
    "make",
    [
        rgba_on_transparent,
        palette_with_transparency,
        sixteen_bit_grey,
        cmyk_jpeg,
        animated_gif,
        grey_alpha,
    ],
)
def test_every_mode_becomes_white_rgb(make):
    # Each image is white once converted: transparency on white, 16-bit max, no ink, frame 0.
    image = open_image(make())
    assert image.mode == "RGB"
    assert np.asarray(image).min() >= 250


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    upright = open_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert upright.size == (20, 60)


def test_image_and_vocabulary_modules_do_not_load_tensorflow():
    # The API's shared image decoder lives in core; the model's own image step stays light too.
    import subprocess
    import sys

    code = "import sys, model.images, model.vocab; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_to_nearly_the_same_input():
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 1280, dtype=np.float32)[None, :, None].repeat(960, 0)
    pixels = np.clip(smooth + rng.normal(0, 20, (960, 1280, 3)), 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    drafted, full = decode_image(data), preprocess(open_image(data))
    assert drafted.shape == full.shape == (299, 299, 3)
    assert np.abs(drafted - full).mean() < 0.01  # a fraction of one 8-bit level (2/255)


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG header declaring `width` × `height` pixels (past Pillow's own bomb limit), no data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("check", ["inspect_header", "open_image", "verify_image"])
def test_a_decompression_bomb_is_refused_naming_the_service_limit(check):
    """Pillow refuses it before the service's own check can: the message still names the limit
    the caller can act on (MAX_IMAGE_PIXELS), not Pillow's 178,956,970."""
    from core import images

    calls = {
        "inspect_header": lambda data: images.inspect_header(data, 10**6, 50_000_000),
        "open_image": lambda data: images.open_image(data, 50_000_000),
        "verify_image": lambda data: images.verify_image(io.BytesIO(data), 50_000_000),
    }
    with pytest.raises(images.ImageError) as refused:
        calls[check](huge_png())
    assert refused.value.code == images.TOO_LARGE
    assert "50,000,000" in str(refused.value) and "178956970" not in str(refused.value)

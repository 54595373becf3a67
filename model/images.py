"""Image bytes to encoder input: decode with Pillow, orient, convert to RGB, resize, scale."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 299  # InceptionV3's input side
MAX_PIXELS = 50_000_000  # refuse decompression bombs well before they exhaust memory


class ImageError(ValueError):
    """Bytes that cannot be captioned; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode bytes into an upright RGB Pillow image, or raise ImageError."""
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, max_pixels)
            image.seek(0)  # first frame of an animation
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "the data is not an image in a known format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt_image", f"the image could not be decoded: {exc}") from exc
    return to_rgb(ImageOps.exif_transpose(image))


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large", f"{width}×{height} pixels is over the limit of {max_pixels:,}"
        )
    if width == 0 or height == 0:
        raise ImageError("corrupt_image", "the image has no pixels")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha on white, 16-bit and float scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = image.convert("I")  # 32-bit ints; 16-bit sources use 0..65535
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """An RGB image to InceptionV3 input: (299, 299, 3) float32 in [-1, 1]."""
    resized = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 127.5 - 1.0


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes to encoder input (299, 299, 3) float32, or raise ImageError."""
    return preprocess(open_image(data, max_pixels))

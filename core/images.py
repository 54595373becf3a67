"""Untrusted image bytes to pictures: the one decoder the API's upload check, the worker, the
attention pictures and the dataset checks all use (Pillow and NumPy; no TensorFlow).

Content decides, never a file name, and only the formats in `FORMATS` are read: every
`Image.open` passes `formats=FORMATS`, so Pillow's other readers (EPS, PSD, FITS, PDF, …) never
see the bytes, not even to recognise them. The API checks an upload from its header
(`inspect_header`); the worker decodes it, once. Every failure is an ImageError with a stable
code: `EMPTY`, `TOO_LARGE` (bytes or pixels, checked before decoding), `UNSUPPORTED` (a format
recognised from its magic number in `SIGNATURES`, but not allowed), `NOT_AN_IMAGE` (no format
recognised) or `CORRUPT` (an allowed format that fails to decode). A picture the model sees
and a picture a person sees are converted the same way: upright (EXIF orientation), first
frame, 8-bit RGB with alpha on white, 16-bit and float grey scaled, CMYK and palettes converted.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageError

MAX_PIXELS = 50_000_000  # refuse decompression bombs well before they exhaust memory
# The formats the service reads (JPEG's reader also takes the MPO files some phones write);
# Pillow's other readers (FITS, PSD, EPS through Ghostscript, …) never see untrusted bytes.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
EMPTY, TOO_LARGE = "empty_image", "image_too_large"
NOT_AN_IMAGE, CORRUPT = "not_an_image", "corrupt_image"
UNSUPPORTED = "unsupported_format"
# Magic numbers of formats refused by name (offset, bytes, name): compared here, so that no
# reader of theirs runs. Bytes matching none of these or FORMATS are `NOT_AN_IMAGE`.
SIGNATURES = (
    (0, b"%!PS", "EPS"), (0, b"\xc5\xd0\xd3\xc6", "EPS"), (0, b"8BPS", "PSD"),
    (0, b"SIMPLE  =", "FITS"), (0, b"%PDF", "PDF"), (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"icns", "ICNS"), (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"), (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xffO\xffQ", "JPEG 2000"), (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (0, b"\xff\n", "JPEG XL"), (0, b"\x01\xda", "SGI"), (0, b"gimp xcf", "XCF"),
    (0, b"v/1\x01", "OpenEXR"), (4, b"ftypheic", "HEIF"), (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"), (128, b"DICM", "DICOM"),
)  # fmt: skip
TGA_FOOTER = b"TRUEVISION-XFILE.\x00"  # TGA has no magic number; version 2 files end with this


@dataclass(frozen=True)
class ImageInfo:
    """What a job records about its image."""

    format: str  # Pillow's name for it: PNG, JPEG, WEBP, …
    width: int
    height: int


def inspect_header(data: bytes, max_bytes: int, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Format and size from the header alone (the API's check; the worker decodes once)."""
    _check_bytes(data, max_bytes)
    with _pillow_errors(data, max_pixels), Image.open(io.BytesIO(data), formats=FORMATS) as image:
        _check_pixels(image, max_pixels)
        return ImageInfo(image.format or "unknown", image.width, image.height)


def _check_bytes(data: bytes, max_bytes: int) -> None:
    if not data:
        raise ImageError(EMPTY, "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(TOO_LARGE, f"the image is over {max_bytes:,} bytes")


def open_image(
    data: bytes, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB Pillow image (the first frame of an animation);
    with `draft`, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, never below that size."""
    image = _decode(data, max_pixels, draft)
    ImageOps.exif_transpose(image, in_place=True)  # no full-size copy when already upright
    return image if image.mode == "RGB" else to_rgb(image)  # nor when already RGB


def verify_image(stream: IO[bytes], max_pixels: int = MAX_PIXELS) -> None:
    """Check an image read from a stream, from its header and checksums, without decoding it."""
    with _pillow_errors(stream, max_pixels), Image.open(stream, formats=FORMATS) as image:
        _check_pixels(image, max_pixels)
        image.verify()


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


def _decode(data: bytes, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """The first frame, decoded, in its own mode; the pixel limit is checked before decoding."""
    if not data:
        raise ImageError(EMPTY, "the image is empty (0 bytes)")
    with _pillow_errors(data, max_pixels):
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        _check_pixels(image, max_pixels)  # the full size, before a draft shrinks it
        image.seek(0)
        if draft is not None:
            image.draft("RGB", draft)  # JPEG only; other formats ignore it
        image.load()
    return image


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(TOO_LARGE, f"{width}×{height} pixels is over the limit of {max_pixels:,}")
    if width == 0 or height == 0:
        raise ImageError(CORRUPT, "the image has no pixels")


def refused_format(data: bytes) -> str | None:
    """The name of the refused format `data` is in, from its magic number; None if unknown."""
    if data.endswith(TGA_FOOTER):
        return "TGA"
    for offset, magic, name in SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def _head(source: bytes | IO[bytes], size: int = 256) -> bytes:
    """The first bytes of `source`; a stream is read again from its start, once Pillow has
    given up on it (b"" if it cannot be)."""
    if isinstance(source, bytes):
        return source
    try:  # not before: reading ahead may reach an archive member's end, and its CRC check
        source.seek(0)
        return source.read(size)
    except Exception:
        return b""


@contextmanager
def _pillow_errors(source: bytes | IO[bytes], max_pixels: int) -> Iterator[None]:
    """Pillow's failures on untrusted bytes (`source`) as ImageError (its bomb warning
    included: named by the service's own limit, `max_pixels`, not Pillow's)."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        supported = ", ".join(FORMATS)
        if name := refused_format(_head(source)):
            message = f"{name} is not a supported format ({supported})"
            raise ImageError(UNSUPPORTED, message) from exc
        raise ImageError(
            NOT_AN_IMAGE, f"the data is not an image in a supported format ({supported})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            TOO_LARGE, f"the image is over the limit of {max_pixels:,} pixels"
        ) from exc
    except Exception as exc:  # decoders of untrusted bytes fail in many ways; each is corrupt
        reason = str(exc) or type(exc).__name__
        raise ImageError(CORRUPT, f"the image could not be decoded: {reason}") from exc

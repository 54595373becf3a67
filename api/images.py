"""Upload checks before anything is stored: size, real image content, pixel limits."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from api.errors import ApiError


@dataclass(frozen=True)
class ImageInfo:
    """What the job row records about its image."""

    format: str
    width: int
    height: int


def inspect_image(data: bytes, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Decode the image fully once (catching truncation) or raise a 4xx ApiError."""
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ApiError(413, "image_too_large", f"the image is over {max_bytes:,} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ApiError(
                        413,
                        "image_too_large",
                        f"{width}×{height} pixels is over the limit of {max_pixels:,}",
                    )
                image.load()
                return ImageInfo(image.format or "unknown", width, height)
    except ApiError:
        raise
    except UnidentifiedImageError:
        raise ApiError(415, "not_an_image", "the data is not an image in a known format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(400, "corrupt_image", f"the image could not be decoded: {exc}") from None

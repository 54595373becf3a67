"""Images by URL: the inference worker downloads a job's `image_url` through the SSRF guard.

The API only checks the URL; the download happens here, in the worker, so an API request never
waits on (or is steered by) a remote server. The bytes are sniffed (`inspect_header`: what they
are, never what the server calls them), then kept under the job's image key, as an upload would
be: a retry reads them from the blob store, and so does the attention overlay.
"""

from __future__ import annotations

from core.images import ImageInfo, inspect_header
from core.netguard import Guard, fetch
from core.settings import Settings


def fetch_image(url: str, guard: Guard, settings: Settings) -> tuple[bytes, ImageInfo]:
    """The image at `url` and what its header says; UrlError (url_forbidden, url_unreachable,
    url_timeout, url_too_large, url_redirects) or ImageError (not_an_image, …) otherwise."""
    data = fetch(url, guard, settings.max_image_bytes, settings.url_fetch_timeout_s)
    return data, inspect_header(data, settings.max_image_bytes, settings.max_image_pixels)

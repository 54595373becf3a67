"""Absolute links: with the PUBLIC_URL setting, every `urls` link and `Location` of an answer
starts with it (clients behind a proxy or on another host need no base of their own)."""

from __future__ import annotations

from flask import Flask, Response

from core.settings import Settings
from store.payloads import absolute_urls


def register_public_links(app: Flask, settings: Settings) -> None:
    """Make the links of JSON answers absolute when `settings.public_url` is set."""
    base = settings.public_url
    if not base:
        return

    @app.after_request
    def absolute_links(response: Response) -> Response:
        if response.is_json and not response.direct_passthrough:
            response.set_data(app.json.dumps(absolute_urls(response.get_json(), base)))
        location = response.headers.get("Location")
        if location and location.startswith("/"):
            response.headers["Location"] = base + location
        return response

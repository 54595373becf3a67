"""The web page: `/` (jobs: submit, watch, explore attention, correct) and `/training` (runs,
versions), plain HTML, CSS and JavaScript modules from `api/static/`, no build step and no CDN.

The pages need no key (`public`); the calls their scripts make carry the key the user types,
so every answer is checked as any client's is.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from api.auth import public

bp = Blueprint("web", __name__)
ASSETS = Path(__file__).parents[1] / "static"
# Scripts, styles and calls from this origin only; pictures also from blob: (the user's files)
# and data:; nothing inline, no frames, no plugins.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@bp.get("/")
@public
def jobs_page() -> Response:
    """The jobs page."""
    return asset("index.html")


@bp.get("/training")
@public
def training_page() -> Response:
    """The training page."""
    return asset("training.html")


@bp.get("/web/<path:filename>")
@public
def web_asset(filename: str) -> Response:
    """A script or style sheet of the pages."""
    return asset(filename)


def asset(filename: str) -> Response:
    """A file of `api/static/` with the pages' security headers (404 outside the folder)."""
    response = send_from_directory(ASSETS, filename, max_age=0)
    response.headers.update(HEADERS)
    return response

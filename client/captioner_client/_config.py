"""Where the API is and which key to send, from arguments, the environment or the data folder."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE = "api-key"
DEMO_KEY_FILE = "data/service/api-key"  # `make demo` leaves its key there; `make up` serves it


def default_api_url() -> str:
    """`CAPTIONER_API_URL`, else the local service's address."""
    return os.environ.get("CAPTIONER_API_URL") or DEFAULT_URL


def key_file(data_dir: str | Path | None = None) -> Path:
    """The embedded mode's key file the client reads: in `data_dir`, else `CAPTIONER_DATA_DIR`,
    else ./captioner-data."""
    return Path(data_dir or os.environ.get("CAPTIONER_DATA_DIR") or "captioner-data") / KEY_FILE


def default_api_key(data_dir: str | Path | None = None) -> str | None:
    """`CAPTIONER_API_KEY`, else the embedded mode's key file in the data directory (default
    `CAPTIONER_DATA_DIR` or ./captioner-data), else None."""
    if os.environ.get("CAPTIONER_API_KEY"):
        return os.environ["CAPTIONER_API_KEY"].strip()
    path = key_file(data_dir)
    return path.read_text().strip() if path.is_file() else None


def missing_key_hint() -> str:
    """What to do about a 401 when no key was sent: the three ways to give one, and where the
    embedded service keeps its key."""
    return (
        "no API key was sent. Give one in any of three ways: --api-key KEY (in Python, "
        "Client(api_key=KEY)), the CAPTIONER_API_KEY environment variable, or the header "
        "'Authorization: Bearer KEY'. `captioner up` keeps its admin key in its data folder's "
        f"api-key file: {DEMO_KEY_FILE} after `make demo` "
        f"(export CAPTIONER_API_KEY=$(cat {DEMO_KEY_FILE})); with neither the option nor the "
        f"variable the client reads {key_file()} (CAPTIONER_DATA_DIR/api-key), which is not there."
    )

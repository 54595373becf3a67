"""Where the API is and which key to send, from arguments, the environment or the data folder."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
KEY_FILE = "api-key"


def default_api_url() -> str:
    """`CAPTIONER_API_URL`, else the local service's address."""
    return os.environ.get("CAPTIONER_API_URL") or DEFAULT_URL


def default_api_key(data_dir: str | Path | None = None) -> str | None:
    """`CAPTIONER_API_KEY`, else the embedded mode's key file in the data directory (default
    `CAPTIONER_DATA_DIR` or ./captioner-data), else None."""
    if os.environ.get("CAPTIONER_API_KEY"):
        return os.environ["CAPTIONER_API_KEY"].strip()
    folder = Path(data_dir or os.environ.get("CAPTIONER_DATA_DIR") or "captioner-data")
    path = folder / KEY_FILE
    return path.read_text().strip() if path.is_file() else None

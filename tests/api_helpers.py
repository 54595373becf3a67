"""Test helper (not a test module): what the API tests share besides fixtures."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image


def queued_messages(connection) -> list[list[str]]:
    """The chunks of job ids waiting on the inference queue (Celery messages, oldest first)."""
    messages = [json.loads(raw) for raw in reversed(connection.lrange("inference", 0, -1))]
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def queued_ids(connection) -> list[str]:
    """Job ids waiting on the inference queue, oldest first."""
    return [job_id for chunk in queued_messages(connection) for job_id in chunk]


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    """Standard base64 text, as JSON submissions carry images."""
    return base64.b64encode(data).decode()


def tiff() -> bytes:
    """A small TIFF (a format the service takes since issue 14)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    return buffer.getvalue()


def ico() -> bytes:
    """A small Windows icon: an image, but not in a format the service takes."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "ICO")
    return buffer.getvalue()

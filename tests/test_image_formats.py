"""The format allow-list, checked on content: JPEG, PNG, WebP, GIF, BMP and TIFF are read; any
other format is `unsupported_format` (named from its magic number), anything else
`not_an_image`; and no reader of another format ever runs, in the API's check or the decoder."""

from __future__ import annotations

import io
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from core.errors import ImageError
from core.images import FORMATS, inspect_header, open_image, verify_image
from tests.helpers import ico, queued_ids, tiff

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_READERS = {"Jpeg", "Mpo", "Png", "WebP", "Gif", "Bmp", "Tiff"}  # Pillow's plugin modules


def saved(fmt: str, mode: str = "RGB", size: tuple[int, int] = (8, 8)) -> bytes:
    """A small picture saved by Pillow in `fmt`."""
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, fmt)
    return buffer.getvalue()


def fits() -> bytes:
    """A real FITS file: an 8×8 8-bit image, its 2880-byte header block of 80-column cards."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                    8",
        "NAXIS2  =                    8",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    return header + bytes(64).ljust(2880, b"\0")


def psd() -> bytes:
    """A Photoshop header: 3 channels of 8×8 at 8 bits, RGB, with empty sections after it."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 8, 8, 8, 3) + bytes(4 * 3 + 2 + 192)


REFUSED = {
    "EPS": saved("EPS"), "PSD": psd(), "FITS": fits(), "PDF": saved("PDF"), "ICO": ico(),
    "TGA": saved("TGA"), "SGI": saved("SGI"), "DDS": saved("DDS"), "QOI": saved("QOI"),
}  # fmt: skip
ACCEPTED = {
    "TIFF": tiff(), "TIFF 16-bit": saved("TIFF", "I;16"), "TIFF CMYK": saved("TIFF", "CMYK"),
    "PNG": saved("PNG"), "JPEG": saved("JPEG"), "GIF": saved("GIF"), "BMP": saved("BMP"),
    "WEBP": saved("WEBP"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_formats_are_refused_by_name_on_every_path(name):
    data = REFUSED[name]
    for read in (
        lambda: inspect_header(data, 1 << 20),
        lambda: open_image(data),
        lambda: verify_image(io.BytesIO(data)),
    ):
        with pytest.raises(ImageError) as info:
            read()
        assert info.value.code == "unsupported_format"
        assert info.value.message.startswith(f"{name} is not a supported format")


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_the_allowed_formats_decode_to_rgb(name):
    data = ACCEPTED[name]
    assert inspect_header(data, 1 << 20).format == name.split()[0]
    picture = open_image(data)
    assert picture.mode == "RGB" and picture.size == (8, 8)
    verify_image(io.BytesIO(data))


def test_bytes_in_no_format_are_not_an_image():
    with pytest.raises(ImageError) as info:
        open_image(b"just some text, no picture")
    assert info.value.code == "not_an_image" and "TIFF" in info.value.message


def plugin_calls(read: Callable[[], object]) -> set[str]:
    """The Pillow format plugins whose functions ran during `read()` (traced, not patched)."""
    Image.init()  # every plugin imported (registered) before tracing: imports run no reader
    called = set()

    def profile(frame, event, _arg):
        name = Path(frame.f_code.co_filename).name
        if event == "call" and name.endswith("ImagePlugin.py"):
            called.add(name.removesuffix("ImagePlugin.py"))

    sys.setprofile(profile)
    try:
        read()
    except (ImageError, OSError):
        pass
    finally:
        sys.setprofile(None)
    return called


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_no_reader_of_a_refused_format_runs(name):
    data = REFUSED[name]
    for read in (
        lambda: inspect_header(data, 1 << 20),
        lambda: open_image(data),
        lambda: verify_image(io.BytesIO(data)),
    ):
        assert plugin_calls(read) <= ALLOWED_READERS


def test_the_tracer_sees_readers_run():
    assert "Png" in plugin_calls(lambda: open_image(ACCEPTED["PNG"]))
    assert "Fits" in plugin_calls(lambda: Image.open(io.BytesIO(fits())))  # without formats=


def test_only_core_images_opens_image_bytes():
    """One decode path: the API's check, the worker, the attention picture, the dataset checks
    and the CLI all go through core.images."""
    opened = {
        path.relative_to(ROOT).as_posix()
        for package in ("api", "core", "store", "model", "worker", "captioner")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"Image\.open\(|ImageFile\.Parser", path.read_text())
    }
    assert opened == {"core/images.py"}
    assert all(
        "formats=FORMATS" in line
        for line in (ROOT / "core/images.py").read_text().splitlines()
        if "Image.open(" in line
    )
    assert FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_api_answers_415_unsupported_format_whatever_the_file_name(client, queue, name):
    upload = {"image": (io.BytesIO(REFUSED[name]), "photo.png")}
    response = client.post("/v1/jobs", data=upload)
    assert response.status_code == 415
    error = response.get_json()
    assert error["code"] == "unsupported_format" and error["detail"].startswith(name)
    assert queued_ids(queue) == []


def test_the_api_takes_a_tiff(client, queue):
    response = client.post("/v1/jobs", data={"image": (io.BytesIO(tiff()), "scan.tif")})
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["image"]["format"] == "TIFF"
    assert queued_ids(queue) == [response.get_json()["id"]]

"""/v1/jobs/{id}/attention[.png] against real Postgres and moto S3, on jobs the store finished."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from core.images import open_image
from core.plots import LABEL_HEIGHT, MARGIN, tile_box
from store import jobs
from store.blob_keys import attention_png_key
from tests.helpers import TOKENS, b64, png, succeeded_job


def weights(rows: int = len(TOKENS)) -> np.ndarray:
    """Attention as the worker stores it: (T, 64) float16, each row summing to about 1."""
    raw = np.random.default_rng(rows).random((rows, 64))
    return (raw / raw.sum(axis=1, keepdims=True)).astype(np.float16)


def npy(array: np.ndarray) -> bytes:
    """The array as .npy bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("in_row", [True, False], ids=["in-row", "blob-before-0005"])
def test_raw_attention_is_the_stored_npy(client, app, in_row):
    stored = weights()
    job_id = succeeded_job(app, npy(stored), in_row=in_row)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["urls"]["attention"] == f"/v1/jobs/{job_id}/attention"
    assert job["urls"]["attention_png"] == f"/v1/jobs/{job_id}/attention.png"
    response = client.get(job["urls"]["attention"])
    assert response.status_code == 200 and response.mimetype == "application/octet-stream"
    assert f"{job_id}.attention.npy" in response.headers["Content-Disposition"]
    loaded = np.load(io.BytesIO(response.data), allow_pickle=False)
    assert loaded.dtype == np.float16 and loaded.shape == (3, 64)
    assert np.array_equal(loaded, stored)
    assert client.get(f"/v1/jobs/{job_id}/attention?format=npy").data == response.data


def test_json_attention_is_one_8x8_grid_per_token(client, app):
    stored = weights()
    job_id = succeeded_job(app, npy(stored))
    body = client.get(f"/v1/jobs/{job_id}/attention?format=json").get_json()
    assert body["job_id"] == str(job_id) and body["tokens"] == TOKENS
    assert body["shape"] == [3, 8, 8]
    grids = np.array(body["attention"])
    assert grids.shape == (3, 8, 8)
    assert np.allclose(grids, stored.astype(np.float64).reshape(3, 8, 8), atol=1e-6)
    assert body["attention"][1][2][5] == round(float(stored[1, 2 * 8 + 5]), 6)  # row-major


def test_png_grid_is_rendered_once_then_served_from_the_cache(client, app):
    job_id = succeeded_job(app, npy(weights()))
    response = client.get(f"/v1/jobs/{job_id}/attention.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    with Image.open(io.BytesIO(response.data)) as grid:
        assert grid.format == "PNG"
        # The plain image and one tile per token, four to a row: a single row here.
        assert grid.size == (MARGIN + 4 * (224 + MARGIN), MARGIN + LABEL_HEIGHT + 224 + MARGIN)
    blobs = app.extensions["captioner"].blobs
    assert blobs.get(attention_png_key(job_id)) == response.data
    marker = png((5, 5))
    blobs.put(attention_png_key(job_id), marker, "image/png")
    assert client.get(f"/v1/jobs/{job_id}/attention.png").data == marker


def gif_green_then_red() -> bytes:
    """An animated GIF whose first frame is green."""
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def jpeg_upside_down() -> bytes:
    """Red left, blue right as stored; EXIF orientation 3 says to turn it 180° (blue left)."""
    image = Image.new("RGB", (64, 48), (220, 0, 0))
    image.paste((0, 0, 220), (32, 0, 64, 48))
    exif = Image.Exif()
    exif[0x0112] = 3
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("image_in_row", [False, True], ids=["object", "in-row"])
def test_png_grid_draws_the_image_wherever_it_is_kept(client, app, image_in_row):
    green = png((64, 48), (0, 200, 0))
    job_id = succeeded_job(app, npy(weights()), image=green, image_in_row=image_in_row)
    response = client.get(f"/v1/jobs/{job_id}/attention.png")
    assert response.status_code == 200, response.get_json()
    with Image.open(io.BytesIO(response.data)) as grid:
        left, top, _, bottom = tile_box(0, columns=4)  # the plain image, no heat
        pixel = grid.convert("RGB").getpixel((left + 40, (top + bottom) // 2))
    assert max(range(3), key=lambda c: pixel[c]) == 1, pixel


@pytest.mark.parametrize(
    ("image", "channel"),
    [(gif_green_then_red(), 1), (jpeg_upside_down(), 2)],
    ids=["gif-first-frame", "jpeg-exif-orientation"],
)
def test_png_grid_shows_the_image_as_viewers_do(client, app, image, channel):
    job_id = succeeded_job(app, npy(weights()), image=image)
    response = client.get(f"/v1/jobs/{job_id}/attention.png")
    with Image.open(io.BytesIO(response.data)) as grid:
        left, top, _, bottom = tile_box(0, columns=4)  # the plain image, no heat
        pixel = grid.convert("RGB").getpixel((left + 40, (top + bottom) // 2))
    assert max(range(3), key=lambda c: pixel[c]) == channel, pixel


def grey_16_bit() -> bytes:
    """A 16-bit greyscale PNG at half range: 8-bit grey 128 to the model."""
    buffer = io.BytesIO()
    Image.new("I;16", (64, 48), 32896).save(buffer, "PNG")
    return buffer.getvalue()


def transparent() -> bytes:
    """A PNG that is black under full transparency: white to the model (alpha on white)."""
    buffer = io.BytesIO()
    Image.new("RGBA", (64, 48), (0, 0, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("image", [grey_16_bit(), transparent()], ids=["16-bit", "transparent"])
def test_png_grid_shows_the_image_as_the_model_saw_it(client, app, image):
    job_id = succeeded_job(app, npy(weights()), image=image)
    response = client.get(f"/v1/jobs/{job_id}/attention.png")
    with Image.open(io.BytesIO(response.data)) as grid:
        left, top, right, bottom = tile_box(0, columns=4)  # the plain image, no heat
        shown = grid.convert("RGB").getpixel(((left + right) // 2, (top + bottom) // 2))
    seen = open_image(image).getpixel((32, 24))  # what the worker hands the encoder
    assert shown == seen and seen in ((128, 128, 128), (255, 255, 255))


def make_job(kind: str, app, client) -> str:
    """The id of a job in the state `kind` names."""
    if kind == "queued":
        return client.post("/v1/jobs", json={"image": b64(png())}).get_json()["id"]
    if kind == "failed":
        job_id = client.post("/v1/jobs", json={"image": b64(png())}).get_json()["id"]
        with app.extensions["captioner"].db.session() as session:
            jobs.fail_job(session, uuid.UUID(job_id), "model_error", "boom")
        return job_id
    attention = {
        "succeeded": npy(weights()),
        "no-npy": None,
        "corrupt-npy": b"not an npy",
        "wrong-rows": npy(weights(5)),
    }[kind]
    return str(succeeded_job(app, attention))


@pytest.mark.parametrize(
    ("kind", "suffix", "status", "code", "names"),
    [
        ("queued", "/attention", 409, "attention_not_ready", "queued"),
        ("queued", "/attention.png", 409, "attention_not_ready", "queued"),
        ("failed", "/attention?format=json", 409, "attention_not_ready", "failed"),
        ("unknown", "/attention", 404, "job_not_found", "no job"),
        ("unknown", "/attention.png", 404, "job_not_found", "no job"),
        ("no-npy", "/attention", 404, "attention_missing", "attention/"),
        ("no-npy", "/attention?format=json", 404, "attention_missing", "attention/"),
        ("no-npy", "/attention.png", 404, "attention_missing", "attention/"),
        ("succeeded", "/attention?format=xml", 400, "invalid_format", "json"),
        ("succeeded", "/attention?format=", 400, "invalid_format", "npy"),
        ("corrupt-npy", "/attention?format=json", 500, "attention_unreadable", "job"),
        ("wrong-rows", "/attention.png", 500, "attention_unreadable", "3 tokens"),
    ],
)
def test_attention_errors(client, app, queue, kind, suffix, status, code, names):
    job_id = str(uuid.uuid4()) if kind == "unknown" else make_job(kind, app, client)
    response = client.get(f"/v1/jobs/{job_id}{suffix}")
    assert response.status_code == status
    error = response.get_json()
    assert error["code"] == code and names in error["detail"]
    assert not app.extensions["captioner"].blobs.exists(attention_png_key(job_id))


def test_a_queued_job_has_no_attention_links(client, queue):
    job = client.post("/v1/jobs", json={"image": b64(png())}).get_json()
    assert "attention" not in job["urls"] and "attention_png" not in job["urls"]

"""Malformed requests of the kinds that crash naive parsers (deep nesting, huge numbers, digits
that are not ASCII, bodies that are not what they claim): each is a 4xx JSON error, never a
500."""

from __future__ import annotations

import io

import pytest

from tests.helpers import b64, png

NESTED = "[" * 20_000 + "]" * 20_000  # deeper than the recursion limit, under 64 KiB


@pytest.mark.parametrize("number", ["1e999", "Infinity", "-Infinity", "NaN", "-1e999"])
@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches"])
def test_numbers_beyond_floats_are_a_400(client, queue, number, route):
    image = f'"image": "{b64(png())}"' if route == "/v1/jobs" else f'"images": ["{b64(png())}"]'
    body = f'{{{image}, "beam_size": {number}}}'
    response = client.post(route, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["code"] == "invalid_option"


@pytest.mark.parametrize(
    "route",
    ["/v1/jobs", "/v1/batches", "/v1/training-runs", "/v1/webhooks/secret/rotate", "/v1/keys"],
)
@pytest.mark.parametrize("wrapped", [NESTED, '{"a": ' + NESTED + "}"])
def test_deeply_nested_json_is_a_400(client, queue, route, wrapped):
    response = client.post(route, data=wrapped, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert response.get_json()["code"] in ("invalid_json", "invalid_grace")


@pytest.mark.parametrize(
    "method, url",
    [
        ("GET", "/v1/models/v²"),
        ("POST", "/v1/models/v²/promote"),
        ("GET", "/v1/models/²"),
        ("GET", "/v1/models/v١"),  # an Arabic-Indic digit: int() takes it, the API must not
    ],
)
def test_digits_that_are_not_ascii_name_no_version(client, method, url):
    response = client.open(url, method=method)
    assert (response.status_code, response.get_json()["code"]) == (404, "model_not_found")


@pytest.mark.parametrize("limit", ["²", "١٠", "1e1", "-1", "0", "101", " 5"])
def test_a_limit_that_is_not_ascii_digits_is_a_400(client, limit):
    response = client.get("/v1/jobs", query_string={"limit": limit})
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_limit")


def test_a_base_version_with_a_superscript_is_a_400(client, queue):
    body = {"dataset": {"type": "shapes", "size": 20}, "base_version": "v²"}
    response = client.post("/v1/training-runs", json=body)
    assert (response.status_code, response.get_json()["code"]) == (400, "invalid_base_version")


@pytest.mark.parametrize("route, field", [("/v1/jobs", "image"), ("/v1/batches", "images")])
def test_unknown_fields_are_refused_by_name_as_json_and_form(client, queue, route, field):
    image = b64(png()) if field == "image" else [b64(png())]
    as_json = client.post(route, json={field: image, "top_k": 5})
    form = {field: (io.BytesIO(png()), "a.png"), "top_k": "5", "beam_size": "2"}
    as_form = client.post(route, data=form, content_type="multipart/form-data")
    for response in (as_json, as_form):
        error = response.get_json()
        assert (response.status_code, error["code"]) == (400, "unknown_field")
        assert "top_k" in error["detail"]
    assert queue.llen("inference") == 0  # nothing was queued

"""Caption corrections (/v1/jobs/{id}/feedback, /v1/feedback) and training runs that learn from
them, against real Postgres, Redis and moto S3, on jobs the store finished."""

from __future__ import annotations

import pytest

from harness.stack import admin_key
from store.blob_keys import feedback_image_key
from tests.helpers import TOKENS, b64, png, succeeded_job

SHAPES_RUN = {"dataset": {"type": "shapes", "size": 40}, "promotion": "never"}


def correct(client, job_id, caption="a blue square"):
    return client.post(f"/v1/jobs/{job_id}/feedback", json={"caption": caption})


@pytest.fixture
def other_tenant(app):
    """Authorization headers of another tenant's admin key."""
    return {"Authorization": f"Bearer {admin_key(app.extensions['captioner'].db, 'tenant-b')}"}


@pytest.mark.parametrize("image_in_row", [False, True], ids=["object", "in-row"])
def test_a_correction_keeps_its_own_copy_of_the_image_and_outlives_the_job(
    app, client, image_in_row
):
    image = png((70, 50), (10, 20, 200))
    job_id = succeeded_job(app, None, image, image_in_row=image_in_row)
    answer = correct(client, job_id, "  a blue \n square ")
    assert answer.status_code == 201, answer.json
    body = answer.json
    assert answer.headers["Location"].endswith(f"/v1/feedback/{body['id']}")
    assert body["caption"] == "a blue square"  # whitespace collapsed
    assert body["model_caption"] == " ".join(TOKENS) and body["model_version"] == "v1"
    assert body["job_id"] == str(job_id)
    blobs = app.extensions["captioner"].blobs
    assert blobs.get(feedback_image_key(body["id"])) == image
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/feedback/{body['id']}").json == body
    assert blobs.get(feedback_image_key(body["id"])) == image


def test_deleting_a_correction_deletes_its_image(app, client):
    body = correct(client, succeeded_job(app, None)).json
    assert client.delete(f"/v1/feedback/{body['id']}").status_code == 204
    assert client.get(f"/v1/feedback/{body['id']}").status_code == 404
    assert not app.extensions["captioner"].blobs.exists(feedback_image_key(body["id"]))


def test_only_a_succeeded_job_can_be_corrected(client, queue):
    job = client.post("/v1/jobs", json={"image": b64(png())}).json
    answer = correct(client, job["id"])
    assert answer.status_code == 409 and answer.json["code"] == "not_captioned"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"caption": ""}, "invalid_caption"),
        ({"caption": "   "}, "invalid_caption"),
        ({"caption": "1234 ..."}, "invalid_caption"),
        ({"caption": "a" * 301}, "invalid_caption"),
        ({"caption": 7}, "invalid_caption"),
        ({}, "invalid_caption"),
        ({"caption": "a cat", "score": 1}, "unknown_field"),
    ],
)
def test_a_bad_correction_is_refused_by_name(app, client, body, code):
    answer = client.post(f"/v1/jobs/{succeeded_job(app, None)}/feedback", json=body)
    assert answer.status_code == 400 and answer.json["code"] == code, answer.json


def test_another_tenants_job_and_corrections_are_not_found(app, client, other_tenant):
    job_id = succeeded_job(app, None)
    mine = correct(client, job_id).json
    assert correct(client.application.test_client(), job_id).status_code == 401
    theirs = client.post(
        f"/v1/jobs/{job_id}/feedback", json={"caption": "a cat"}, headers=other_tenant
    )
    assert theirs.status_code == 404 and theirs.json["code"] == "job_not_found"
    assert client.get(f"/v1/feedback/{mine['id']}", headers=other_tenant).status_code == 404
    assert client.delete(f"/v1/feedback/{mine['id']}", headers=other_tenant).status_code == 404
    listed = client.get("/v1/feedback", headers=other_tenant).json["feedback"]
    assert mine["id"] not in {row["id"] for row in listed}


def test_corrections_are_listed_newest_first(app, client):
    made = [correct(client, succeeded_job(app, None), f"a red circle {n}").json for n in range(3)]
    listed = client.get("/v1/feedback?limit=2").json["feedback"]
    assert [row["id"] for row in listed] == [made[2]["id"], made[1]["id"]]
    assert client.get("/v1/feedback?limit=0").json["code"] == "invalid_limit"


def test_a_run_takes_the_corrections_made_until_it_starts(app, client, other_tenant, queue):
    correct(client, succeeded_job(app, None))
    count = len(client.get("/v1/feedback?limit=500").json["feedback"])
    answer = client.post("/v1/training-runs", json=SHAPES_RUN | {"feedback": {"weight": 5}})
    assert answer.status_code == 201, answer.json
    used = answer.json["dataset"]["feedback"]
    assert used["weight"] == 5 and used["corrections"] == count and used["until"].endswith("Z")
    assert "feedback" not in client.post("/v1/training-runs", json=SHAPES_RUN).json["dataset"]


@pytest.mark.parametrize(
    "feedback", [{"weight": 0}, {"weight": 101}, {"weight": "5"}, [], {"weight": 2, "old": True}]
)
def test_a_run_refuses_a_bad_feedback_block(client, feedback, queue):
    answer = client.post("/v1/training-runs", json=SHAPES_RUN | {"feedback": feedback})
    assert answer.status_code == 400, answer.json
    assert answer.json["code"] in {"invalid_feedback", "unknown_field"}


def test_a_run_without_corrections_to_learn_from_is_refused(client, other_tenant, queue):
    answer = client.post(
        "/v1/training-runs", json=SHAPES_RUN | {"feedback": {}}, headers=other_tenant
    )
    assert answer.status_code == 400 and answer.json["code"] == "invalid_feedback"
    assert "POST /v1/jobs/{id}/feedback" in answer.json["detail"]

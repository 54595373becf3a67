"""The API's training side without workers: runs, datasets, the registry and promotion."""

from __future__ import annotations

import json

import pytest

from core.archives import pack_dataset
from model.shapes import write_shapes_dataset
from store import registry
from store.payloads import worker_label

pytest_plugins = ["tests.api_fixtures"]  # settings, app, client, queue

SHAPES = {"type": "shapes", "size": 40, "seed": 1}


def start(client, **body):
    return client.post("/v1/training-runs", json={"dataset": SHAPES} | body)


def test_a_run_is_recorded_with_defaults_and_sent_to_the_training_queue(client, queue):
    response = start(client, hyperparameters={"epochs": 2, "learning_rate": 0.01})
    assert response.status_code == 201
    run = response.get_json()
    assert response.headers["Location"] == f"/v1/training-runs/{run['id']}"
    assert run["status"] == "queued"
    assert run["hyperparameters"] == {"epochs": 2, "batch_size": 64, "learning_rate": 0.01,
                                      "vocab_size": 5000, "seed": 0, "patience": 3,
                                      "monitor": "bleu4"}  # fmt: skip
    assert run["promotion"] == {"policy": "if_better", "metric": "bleu4"}
    assert run["dataset"] == SHAPES
    message = json.loads(queue.lpop("training"))
    assert message["headers"]["task"] == "worker.train"
    assert run["id"] in message["headers"]["argsrepr"]
    assert queue.llen("inference") == 0
    assert client.get(run["urls"]["self"]).get_json()["id"] == run["id"]
    listed = client.get("/v1/training-runs").get_json()["training_runs"]
    assert run["id"] in [r["id"] for r in listed]


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"dataset": None}, "invalid_dataset", "dataset must be"),
        ({"dataset": {"type": "coco"}}, "invalid_dataset", "dataset must be"),
        ({"dataset": {"type": "shapes", "size": 5}}, "invalid_dataset", "dataset.size"),
        ({"dataset": {"type": "upload", "id": "nope"}}, "invalid_dataset", "dataset.id"),
        ({"dataset": {"type": "upload", "id": "6f1c1b9e-8c2a-4a57-9a53-0b7a4f0b5d11"}},
         "invalid_dataset", "upload one first"),
        ({"hyperparameters": {"epochs": 0}}, "invalid_hyperparameters", "epochs"),
        ({"hyperparameters": {"epochs": 2.5}}, "invalid_hyperparameters", "whole number"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "invalid_hyperparameters", "rate"),
        ({"hyperparameters": {"epoch": 3}}, "unknown_hyperparameter", "epoch"),
        ({"hyperparameters": [1]}, "invalid_hyperparameters", "JSON object"),
        ({"promotion": {"policy": "sometimes"}}, "invalid_promotion", "if_better"),
        ({"promotion": {"policy": "if_better", "metric": "accuracy"}}, "invalid_promotion",
         "bleu4"),
        ({"base_version": "v999"}, "invalid_base_version", "v999"),
        ({"webhook": "ftp://x"}, "invalid_webhook", "http"),
        ({"webhook": "http://h.test/x", "webhook_events": ["done"]}, "invalid_webhook_events",
         "progress"),
        ({"colour": "red"}, "unknown_field", "colour"),
    ],
)  # fmt: skip
def test_a_bad_request_is_refused_and_nothing_is_queued(client, queue, body, code, words):
    response = client.post("/v1/training-runs", json={"dataset": SHAPES} | body)
    assert response.status_code == 400
    error = response.get_json()
    assert (error["code"], words in error["detail"]) == (code, True), error
    assert queue.llen("training") == 0


def test_a_non_json_request_is_refused(client):
    response = client.post("/v1/training-runs", data="dataset=shapes")
    assert response.status_code == 415


def test_a_queued_run_cancels_at_once_and_an_ended_one_cannot(client, queue):
    run = start(client).get_json()
    canceled = client.post(run["urls"]["cancel"])
    assert canceled.status_code == 200
    assert canceled.get_json()["status"] == "canceled"
    assert canceled.get_json()["error"]["code"] == "canceled"  # the run's error, not a problem
    again = client.post(run["urls"]["cancel"])
    assert (again.status_code, again.get_json()["code"]) == (409, "not_cancelable")
    assert client.get("/v1/training-runs/6f1c1b9e-8c2a-4a57-9a53-0b7a4f0b5d11").status_code == 404


def test_a_run_asks_for_its_webhook_events(client, queue):
    body = {"webhook": "http://h.test/runs", "webhook_events": "start,progress,completed"}
    run = start(client, **body).get_json()
    assert run["webhook"] == {"url": "http://h.test/runs",
                              "events": ["start", "progress", "completed"]}  # fmt: skip
    assert client.get(run["urls"]["deliveries"]).get_json() == {"deliveries": []}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-shapes")
    write_shapes_dataset(folder, 10, seed=2, val_fraction=0.3)
    return pack_dataset(folder, folder.with_suffix(".zip")).read_bytes()


def test_a_dataset_upload_is_checked_stored_and_usable_by_a_run(client, queue, app, archive):
    response = client.post("/v1/datasets?name=tiny", data=archive, content_type="application/zip")
    assert response.status_code == 201, response.get_json()
    dataset = response.get_json()
    assert (dataset["name"], dataset["format"], dataset["images"]) == ("tiny", "zip", 10)
    assert dataset["splits"] == {"train": {"images": 7, "captions": 7},
                                 "val": {"images": 3, "captions": 3}}  # fmt: skip
    blobs = app.extensions["captioner"].blobs
    assert blobs.get(f"datasets/{dataset['id']}/archive") == archive
    assert client.get(dataset["urls"]["self"]).get_json() == dataset
    run = start(client, dataset={"type": "upload", "id": dataset["id"]}).get_json()
    assert run["dataset"] == {"type": "upload", "id": dataset["id"], "name": "tiny"}


def test_a_multipart_upload_works_too(client, archive):
    import io

    form = {"archive": (io.BytesIO(archive), "tiny.zip")}
    response = client.post("/v1/datasets", data=form)
    assert response.status_code == 201
    assert response.get_json()["name"] == "tiny.zip"


def test_a_malformed_dataset_is_refused_naming_every_bad_entry(client, tmp_path):
    folder = tmp_path / "bad"
    write_shapes_dataset(folder, 6, seed=3, val_fraction=0.5)
    annotations = folder / "annotations" / "captions_train.json"
    document = json.loads(annotations.read_text())
    document["annotations"][0]["caption"] = ""
    document["annotations"][1]["image_id"] = 999
    annotations.write_text(json.dumps(document))
    (folder / "images" / "val" / "000004.png").write_bytes(b"not a png")
    archive = pack_dataset(folder, tmp_path / "bad.zip").read_bytes()
    response = client.post("/v1/datasets", data=archive, content_type="application/zip")
    assert response.status_code == 400
    error = response.get_json()
    assert error["code"] == "invalid_dataset"
    problems = "\n".join(error["problems"])
    assert "annotations[0]" in problems and "caption" in problems
    assert "image_id 999" in problems
    assert "000004.png" in problems
    assert len(error["problems"]) == 3
    listed = client.get("/v1/datasets").get_json()["datasets"]
    assert "bad.zip" not in [d["name"] for d in listed]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"", "application/zip", 400, "missing_archive"),
        (b"just text", "application/zip", 400, "invalid_dataset"),
        (b"{}", "application/json", 415, "unsupported_media_type"),
    ],
)
def test_not_an_archive_is_refused(client, data, content_type, status, code):
    response = client.post("/v1/datasets", data=data, content_type=content_type)
    assert (response.status_code, response.get_json()["code"]) == (status, code)


def register(app, **metrics) -> str:
    services = app.extensions["captioner"]
    with services.db.session() as session:
        version = registry.register(session, registry.NewVersion(
            digest="d" * 64, encoder_weights="seed:0", encoder_fingerprint="f" * 16,
            metrics={"val": metrics, "best_epoch": 1, "history": []}))  # fmt: skip
        return version.version


def test_promotion_keeps_exactly_one_version_active_and_rolls_back(client, app):
    first, second = register(app, bleu4=0.5), register(app, bleu4=0.7)
    assert client.post(f"/v1/models/{first}/promote").get_json()["active"] is True
    promoted = client.post(f"/v1/models/{second}/promote").get_json()
    assert (promoted["version"], promoted["active"], promoted["metrics"]) == (
        second, True, {"bleu4": 0.7})  # fmt: skip
    listing = client.get("/v1/models").get_json()
    assert listing["active"] == second
    assert [m["version"] for m in listing["models"] if m["active"]] == [second]
    client.post(f"/v1/models/{first}/promote")  # a rollback is promoting the older one
    assert client.get("/v1/models").get_json()["active"] == first
    assert client.get(f"/v1/models/{second}").get_json()["active"] is False
    assert client.get(f"/v1/models/{first.removeprefix('v')}").get_json()["version"] == first


@pytest.mark.parametrize("name", ["v999", "latest", "v", "-1"])
def test_an_unknown_version_is_a_404(client, name):
    response = client.post(f"/v1/models/{name}/promote")
    assert (response.status_code, response.get_json()["code"]) == (404, "model_not_found")


def test_workers_lists_what_each_worker_serves(client, app):
    with app.extensions["captioner"].db.session() as session:
        registry.report_worker(session, "inference@a", model_version="v1")
    workers = client.get("/v1/workers").get_json()["workers"]
    assert [(w["worker"], w["model_version"]) for w in workers] == [(worker_label("inference@a"),
                                                                     "v1")]  # fmt: skip
    assert worker_label("inference@a").startswith("inference@") and "@a" not in str(workers)

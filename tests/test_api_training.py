"""The API's training side without workers: runs, datasets, the registry and promotion."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from core.archives import pack_dataset
from model.shapes import write_shapes_dataset
from store import registry
from store.payloads import worker_label
from store.tables import WorkerModel

SHAPES = {"type": "shapes", "size": 40, "seed": 1}
DEFAULT_MODEL = {"decoder": "gru", "embedding_dim": 256, "units": 512, "attention_units": 512,
                 "layers": 2, "heads": 1, "ff_units": 1024, "dropout": 0.1}  # fmt: skip


def start(client, **body):
    return client.post("/v1/training-runs", json={"dataset": SHAPES} | body)


def test_a_run_is_recorded_with_defaults_and_sent_to_the_training_queue(client, queue):
    response = start(client, hyperparameters={"epochs": 2, "learning_rate": 0.01})
    assert response.status_code == 201
    run = response.get_json()
    assert response.headers["Location"] == f"/v1/training-runs/{run['id']}"
    assert run["status"] == "queued"
    assert run["hyperparameters"] == {
        "epochs": 2,
        "batch_size": 64,
        "learning_rate": 0.01,
        "vocab_size": 5000,
        "seed": 0,
        "patience": 3,
        "monitor": "bleu4",
    }
    assert run["promotion"] == {"policy": "if_better", "metric": "bleu4"}
    assert run["dataset"] == SHAPES
    assert run["model"] == DEFAULT_MODEL  # a fresh run names its architecture, defaults filled in
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
        ({"dataset": {"type": "scenes", "size": 5}}, "invalid_dataset", "dataset.size"),
        ({"dataset": {"type": "scenes", "size": 200_000}}, "invalid_dataset", "dataset.size"),
        ({"dataset": {"type": "scenes", "seed": -1}}, "invalid_dataset", "dataset.seed"),
        ({"dataset": {"type": "scenes", "groups": 3}}, "unknown_field", "dataset.groups"),
        ({"dataset": {"type": "coco"}}, "invalid_dataset", '"scenes"'),
        ({"dataset": {"type": "upload", "id": "nope"}}, "invalid_dataset", "dataset.id"),
        (
            {"dataset": {"type": "upload", "id": "6f1c1b9e-8c2a-4a57-9a53-0b7a4f0b5d11"}},
            "invalid_dataset",
            "upload one first",
        ),
        ({"hyperparameters": {"epochs": 0}}, "invalid_hyperparameters", "epochs"),
        ({"hyperparameters": {"epochs": 2.5}}, "invalid_hyperparameters", "whole number"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "invalid_hyperparameters", "rate"),
        ({"hyperparameters": {"epoch": 3}}, "unknown_field", "hyperparameters.epoch"),
        ({"hyperparameters": [1]}, "invalid_hyperparameters", "JSON object"),
        ({"promotion": {"policy": "sometimes"}}, "invalid_promotion", "if_better"),
        (
            {"promotion": {"policy": "if_better", "metric": "accuracy"}},
            "invalid_promotion",
            "bleu4",
        ),
        ({"base_version": "v999"}, "invalid_base_version", "v999"),
        ({"webhook": "ftp://x"}, "invalid_webhook", "http"),
        (
            {"webhook": "http://h.test/x", "webhook_events": ["done"]},
            "invalid_webhook_events",
            "progress",
        ),
        ({"colour": "red"}, "unknown_field", "colour"),
        ({"model": []}, "invalid_model", "model"),
        ({"model": {"decoder": "lstm"}}, "invalid_model", "model.decoder"),
        ({"model": {"decoder": 1}}, "invalid_model", "model.decoder"),
        ({"model": {"embedding_dim": 8}}, "invalid_model", "model.embedding_dim"),
        ({"model": {"embedding_dim": 2048}}, "invalid_model", "model.embedding_dim"),
        ({"model": {"embedding_dim": "256"}}, "invalid_model", "model.embedding_dim"),
        ({"model": {"embedding_dim": 255.5}}, "invalid_model", "model.embedding_dim"),
        ({"model": {"embedding_dim": 250, "heads": 4}}, "invalid_model", "divisible"),
        ({"model": {"heads": 0}}, "invalid_model", "model.heads"),
        ({"model": {"heads": 32}}, "invalid_model", "model.heads"),
        ({"model": {"heads": True}}, "invalid_model", "model.heads"),
        ({"model": {"layers": 0}}, "invalid_model", "model.layers"),
        ({"model": {"layers": 9}}, "invalid_model", "model.layers"),
        ({"model": {"ff_units": 8}}, "invalid_model", "model.ff_units"),
        ({"model": {"ff_units": 10_000}}, "invalid_model", "model.ff_units"),
        ({"model": {"units": 4096}}, "invalid_model", "model.units"),
        ({"model": {"attention_units": 15}}, "invalid_model", "model.attention_units"),
        ({"model": {"dropout": 0.95}}, "invalid_model", "model.dropout"),
        ({"model": {"dropout": -0.1}}, "invalid_model", "model.dropout"),
        ({"model": {"dropout": "none"}}, "invalid_model", "model.dropout"),
        ({"model": {"depth": 3}}, "unknown_field", "model.depth"),
        ({"model": {"vocab_size": 100}}, "unknown_field", "model.vocab_size"),
    ],
)
def test_a_bad_request_is_refused_and_nothing_is_queued(client, queue, body, code, words):
    response = client.post("/v1/training-runs", json={"dataset": SHAPES} | body)
    assert response.status_code == 400
    error = response.get_json()
    assert (error["code"], words in error["detail"]) == (code, True), error
    assert queue.llen("training") == 0


def test_a_run_trains_the_architecture_it_asks_for(client, queue):
    asked = {"decoder": "transformer", "embedding_dim": 128, "layers": 3, "heads": 4, "dropout": 0}
    run = start(client, model=asked).get_json()
    assert run["model"] == DEFAULT_MODEL | asked  # the rest take their defaults
    assert "model" not in run["hyperparameters"]
    assert client.get(run["urls"]["self"]).get_json()["model"] == run["model"]
    gru = start(client, model={"units": 64, "attention_units": 32}).get_json()["model"]
    assert gru == DEFAULT_MODEL | {"units": 64, "attention_units": 32}


def test_a_fine_tune_keeps_its_base_versions_architecture(client, queue, app):
    base = register(app, bleu4=0.5)
    run = start(client, base_version=base).get_json()
    assert (run["base_version"], run["model"]) == (base, None)
    for model in ({"decoder": "transformer"}, {}, DEFAULT_MODEL):
        response = start(client, base_version=base, model=model)
        problem = response.get_json()
        assert (response.status_code, problem["code"]) == (400, "invalid_model"), problem
        assert "architecture" in problem["detail"]
    assert queue.llen("training") == 1  # only the first run


def test_a_fine_tune_without_a_learning_rate_gets_its_base_decoders(client, queue, app):
    rates = []
    for architecture in (None, {"decoder": "gru"}, {"decoder": "transformer"}):  # None: a GRU
        base = register(app, architecture, bleu4=0.5)
        run = start(client, base_version=base).get_json()
        rates.append(run["hyperparameters"]["learning_rate"])
    assert rates == [1e-3, 1e-3, 5e-4]
    chosen = start(client, base_version=base, hyperparameters={"learning_rate": 0.01})
    assert chosen.get_json()["hyperparameters"]["learning_rate"] == 0.01


def test_a_run_may_train_on_the_scenes_set(client, queue):
    run = start(client, dataset={"type": "scenes", "size": 60, "seed": 7}).get_json()
    assert run["dataset"] == {"type": "scenes", "size": 60, "seed": 7}
    defaults = start(client, dataset={"type": "scenes"}).get_json()["dataset"]
    assert defaults == {"type": "scenes", "size": 1000, "seed": 0}


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
    assert run["webhook"] == {
        "url": "http://h.test/runs",
        "events": ["start", "progress", "completed"],
    }
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
    assert dataset["splits"] == {
        "train": {"images": 7, "captions": 7},
        "val": {"images": 3, "captions": 3},
    }
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


def register(app, architecture=None, **metrics) -> str:
    services = app.extensions["captioner"]
    with services.db.session() as session:
        version = registry.register(
            session,
            registry.NewVersion(
                digest="d" * 64,
                encoder_weights="seed:0",
                encoder_fingerprint="f" * 16,
                metrics={"val": metrics, "best_epoch": 1, "history": []},
                architecture=architecture,
            ),
        )
        return version.version


def test_a_version_shows_its_architecture(client, app):
    transformer = {
        "decoder": "transformer",
        "embedding_dim": 128,
        "layers": 2,
        "heads": 4,
        "ff_units": 256,
        "dropout": 0.1,
        "vocab_size": 40,
    }
    named, unknown = register(app, transformer, bleu4=0.1), register(app, bleu4=0.1)
    assert client.get(f"/v1/models/{named}").get_json()["architecture"] == transformer
    listed = {m["version"]: m for m in client.get("/v1/models").get_json()["models"]}
    assert listed[named]["architecture"] == transformer
    assert listed[unknown]["architecture"] is None


def test_promotion_keeps_exactly_one_version_active_and_rolls_back(client, app):
    first, second = register(app, bleu4=0.5), register(app, bleu4=0.7)
    assert client.post(f"/v1/models/{first}/promote").get_json()["active"] is True
    promoted = client.post(f"/v1/models/{second}/promote").get_json()
    assert (promoted["version"], promoted["active"], promoted["metrics"]) == (
        second,
        True,
        {"bleu4": 0.7},
    )
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


def test_workers_lists_what_each_running_worker_serves(client, app, settings):
    window = registry.live_window_s(settings.model_poll_s)
    assert settings.model_poll_s < window <= 4 * settings.model_poll_s  # a few heartbeats
    with app.extensions["captioner"].db.session() as session:
        registry.report_worker(session, "inference@a", model_version="v1")
        for name, late_s in [("inference@late", window - 2), ("inference@gone", window + 1)]:
            registry.report_worker(session, name, model_version="v1")
            session.flush()
            row = session.get(WorkerModel, name)
            row.seen_at -= timedelta(seconds=late_s)  # its last heartbeat, that long ago
    workers = client.get("/v1/workers").get_json()["workers"]
    assert sorted((w["worker"], w["model_version"]) for w in workers) == sorted(
        [(worker_label("inference@a"), "v1"), (worker_label("inference@late"), "v1")]
    )
    assert worker_label("inference@a").startswith("inference@") and "@a" not in str(workers)
    gauge = 'captioner_workers{role="inference"} 2.0'  # /metrics counts the same workers
    assert gauge in client.get("/metrics").get_data(as_text=True)


def test_a_fresh_runs_default_architecture_is_the_models_own():
    from api.schemas.training import ModelAsked
    from model.config import ModelConfig

    model = ModelConfig()
    asked = ModelAsked().model_dump()
    assert asked == {name: getattr(model, name) for name in asked} == DEFAULT_MODEL

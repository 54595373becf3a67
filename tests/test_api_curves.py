"""A training run's learning curves: JSON columns by epoch, the PNG drawn from them, and the same
404s as the run itself."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from core.plots import CURVES_SIZE, LOSS_COLOUR, METRIC_COLOUR, plot_box
from store import training

METRICS = {"bleu1": 0.5, "bleu2": 0.4, "bleu3": 0.3, "bleu4": 0.2, "cider": 1.5,
           "exact_match": 0.0, "localization": None}  # fmt: skip


def insert_run(
    app, history: list[dict] | None, owner: str = "tenant-a", monitor: str | None = "cider"
) -> str:
    """A run of `owner` recorded with `history` (as a worker leaves it), its id."""
    hyperparameters = {"epochs": 3} | ({"monitor": monitor} if monitor else {})
    new = training.NewRun(
        owner=owner,
        dataset={"type": "shapes", "size": 40, "seed": 0},
        hyperparameters=hyperparameters,
        promotion={"policy": "never", "metric": "bleu2"},
    )
    with app.extensions["captioner"].db.session() as session:
        run = training.create_run(session, new)
        run.history = history
    return str(new.id)


def epoch(number: int, loss: float, accuracy: float | None = None, **metrics) -> dict:
    """A history row; `accuracy` only when given (older runs have none)."""
    row = {"epoch": number, "loss": loss, **(METRICS | metrics)}
    return row | ({"accuracy": accuracy} if accuracy is not None else {})


def test_the_curves_are_the_history_by_column(client, app):
    run_id = insert_run(app, [epoch(1, 2.5, 0.31, bleu4=0.1), epoch(2, 1.25, 0.52, cider=None)])
    response = client.get(f"/v1/training-runs/{run_id}/curves")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == {
        "run_id": run_id,
        "metric": "cider",
        "epochs": [1, 2],
        "loss": [2.5, 1.25],
        "accuracy": [0.31, 0.52],
        "metrics": {
            "bleu1": [0.5, 0.5],
            "bleu2": [0.4, 0.4],
            "bleu3": [0.3, 0.3],
            "bleu4": [0.1, 0.2],
            "cider": [1.5, None],
            "exact_match": [0.0, 0.0],
            "localization": [None, None],
        },
        "urls": {
            "self": f"/v1/training-runs/{run_id}/curves",
            "png": f"/v1/training-runs/{run_id}/curves.png",
            "run": f"/v1/training-runs/{run_id}",
        },
    }


def test_a_run_from_before_token_accuracy_has_null_accuracy(client, app):
    history = [epoch(1, 2.0), epoch(2, 1.0), epoch(3, 0.5, 0.7)]  # only the last has it
    run_id = insert_run(app, history, monitor=None)
    curves = client.get(f"/v1/training-runs/{run_id}/curves").get_json()
    assert curves["accuracy"] == [None, None, 0.7]
    assert curves["loss"] == [2.0, 1.0, 0.5]
    assert curves["metric"] == "bleu2"  # no monitor: the promotion's metric


@pytest.mark.parametrize("history", [None, []])
def test_a_run_with_no_epochs_yet_has_empty_curves(client, app, history):
    run_id = insert_run(app, history)
    curves = client.get(f"/v1/training-runs/{run_id}/curves").get_json()
    assert (curves["epochs"], curves["loss"], curves["accuracy"], curves["metrics"]) == (
        [],
        [],
        [],
        {},
    )
    response = client.get(f"/v1/training-runs/{run_id}/curves.png")
    assert response.status_code == 200
    picture = np.asarray(Image.open(io.BytesIO(response.data)).convert("RGB")).astype(int)
    left, top, right, bottom = plot_box()
    assert not (picture[top:bottom, left:right] == LOSS_COLOUR).all(axis=-1).any()  # no line


def test_the_png_draws_the_curves(client, app):
    run_id = insert_run(app, [epoch(e, 3.0 / e, 0.2 * e, cider=0.3 * e) for e in (1, 2, 3)])
    response = client.get(f"/v1/training-runs/{run_id}/curves.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert response.headers["Cache-Control"] == "no-store"
    with Image.open(io.BytesIO(response.data)) as picture:
        assert (picture.format, picture.size) == ("PNG", CURVES_SIZE)
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    left, top, right, bottom = plot_box()
    plotted = pixels[top - 4 : bottom + 4, left:right]  # the markers overhang the box
    for colour, rises in ((LOSS_COLOUR, False), (METRIC_COLOUR, True)):  # the metric: cider
        ys, xs = np.nonzero((plotted == colour).all(axis=-1))
        assert xs.size > 50, colour
        first, last = ys[xs < xs.min() + 5].mean(), ys[xs > xs.max() - 5].mean()
        assert (first > last) == rises, colour  # cider rises (bleu4 would be flat), loss falls


@pytest.mark.parametrize("suffix", ["curves", "curves.png"])
def test_another_tenants_run_or_an_unknown_one_is_a_404(client, app, suffix):
    theirs = insert_run(app, [epoch(1, 2.0, 0.5)], owner="tenant-b")
    assert client.get(f"/v1/training-runs/{theirs}").status_code == 404  # as the run itself
    for run_id in (theirs, str(uuid.uuid4())):
        response = client.get(f"/v1/training-runs/{run_id}/{suffix}")
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"
        assert response.get_json() == {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "code": "training_run_not_found",
            "detail": f"no training run {run_id}",
        }


def test_the_curves_need_a_key(client, app):
    run_id = insert_run(app, [epoch(1, 2.0)])
    for suffix in ("curves", "curves.png"):
        response = client.get(f"/v1/training-runs/{run_id}/{suffix}", headers={"Authorization": ""})
        assert response.status_code == 401

"""How far to trust a caption (issue 29, the service side): its confidence and out-of-distribution
score from the worker's CaptionResult into the job row, the job JSON (GET, lists, batches,
webhooks: one payload builder) and its `warnings`, the registry's calibration error and OOD
threshold per version, and the counter of flagged jobs. The API runs on real Postgres, Redis
and moto S3."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from api.schemas.jobs import Batch as BatchSchema
from api.schemas.jobs import Job as JobSchema
from api.schemas.registry import ModelVersion as ModelVersionSchema
from api.schemas.training import PromotionResult
from core.formats import bundle_limits
from store import jobs, registry
from store.payloads import batch_json
from store.tables import Batch, Delivery
from tests.helpers import OWNER, new_job, succeeded_job
from worker.inference import Captioned, _stored, count_flagged, limits
from worker.training import Training

HOOK = "https://hooks.test/captions"
FLAGGED = {"score": 3.25, "threshold": 1.5, "flagged": True}
IN_DISTRIBUTION = {"score": 0.5, "threshold": 1.5, "flagged": False}
# A bundle's metrics.json with the model side's limits (older bundles have neither key)
LIMITED = {
    "val": {"bleu4": 0.5},
    "calibration": {"method": "isotonic", "ece_before": 0.2, "ece_after": 0.03, "images": 500},
    "ood": {"method": "mahalanobis", "threshold": 1.5, "false_alarm_rate": 0.05, "images": 500},
}


@dataclass(frozen=True)
class Ood:
    """What model.limits.OodScore carries."""

    score: float
    threshold: float
    flagged: bool


def caption_result(**more) -> SimpleNamespace:
    """A CaptionResult's fields (`more`: its confidence and ood; None, as a bundle without
    limits gives, when left out)."""
    return SimpleNamespace(
        text="a red circle",
        tokens=["a", "red", "circle"],
        log_probs=[-0.1, -0.2, -0.3],
        attention=np.full((3, 64), 1 / 64, np.float32),
        **{"confidence": None, "ood": None, **more},
    )


def test_a_flagged_job_carries_its_confidence_ood_score_and_warning(client, app):
    job_id = succeeded_job(app, None, confidence=0.12, ood=FLAGGED)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert (job["result"]["confidence"], job["result"]["ood"]) == (0.12, FLAGGED)
    assert job["warnings"] == ["out_of_distribution"]
    JobSchema.model_validate(job)
    listed = client.get("/v1/jobs?limit=100").get_json()["jobs"]
    assert next(j for j in listed if j["id"] == str(job_id))["warnings"] == job["warnings"]


@pytest.mark.parametrize(
    "stored",
    [{}, {"confidence": 0.93, "ood": IN_DISTRIBUTION}],
    ids=["a-model-without-limits", "in-distribution"],
)
def test_a_job_not_flagged_has_no_warning(client, app, stored):
    job_id = succeeded_job(app, None, **stored)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["result"]["confidence"] == stored.get("confidence")
    assert job["result"]["ood"] == stored.get("ood")
    assert job["warnings"] == []
    JobSchema.model_validate(job)


def test_batches_and_webhooks_carry_the_same_limits(app):
    db = app.extensions["captioner"].db
    with db.session() as session:
        batch = Batch(id=uuid.uuid4(), owner=OWNER, size=1)
        session.add(batch)
        session.flush()
        hooked = new_job(batch_id=batch.id, webhook_url=HOOK, webhook_events=["completed"])
        job_id = jobs.create_job(session, hooked).id
    with db.session() as session:
        claim = jobs.claim_jobs(session, [job_id], lease_seconds=60, max_attempts=3)
        result = _stored(Captioned(caption_result(confidence=0.4, ood=Ood(**FLAGGED)), 1, 1, "v7"))
        assert jobs.finish_jobs(session, claim.token, {job_id: result}) == [job_id]
    with db.session() as session:
        row = jobs.get_job(session, job_id)
        assert (row.confidence, row.ood) == (0.4, FLAGGED)
        body = BatchSchema.model_validate(batch_json(session.get(Batch, batch.id), [row]))
        assert body.jobs[0].warnings == ["out_of_distribution"]
        (sent,) = session.scalars(select(Delivery.body).where(Delivery.resource_id == job_id))
    data = json.loads(sent)["data"]  # the job.completed webhook's body
    assert (data["result"]["confidence"], data["result"]["ood"]) == (0.4, FLAGGED)
    assert data["warnings"] == ["out_of_distribution"]


def test_the_worker_stores_what_the_caption_result_carries():
    assert limits(caption_result(confidence=0.875, ood=Ood(**FLAGGED))) == {
        "confidence": 0.875,
        "ood": FLAGGED,
    }
    assert limits(caption_result()) == {"confidence": None, "ood": None}  # no limits in the bundle
    # What JSON cannot carry is not stored; a probability stays in [0, 1]
    assert limits(caption_result(confidence=math.nan, ood=Ood(math.inf, 1.0, True))) == {
        "confidence": None,
        "ood": None,
    }
    assert limits(caption_result(confidence=np.float32(1.0000001)))["confidence"] == 1.0


def test_the_counters_count_stored_scored_and_flagged_jobs_by_version():
    def counted(version: str) -> tuple[float, float]:
        """(flagged, scored) jobs of a version so far."""
        return tuple(
            REGISTRY.get_sample_value(f"captioner_jobs_{name}_total", {"model_version": version})
            or 0.0
            for name in ("flagged", "scored")
        )

    before = counted("v-count"), counted("v-other"), counted("v-none")
    results = {
        uuid.uuid4(): _stored(Captioned(caption_result(ood=Ood(**ood)), 1, 1, version))
        for ood, version in [
            (FLAGGED, "v-count"),
            (FLAGGED, "v-count"),
            (IN_DISTRIBUTION, "v-count"),
            (FLAGGED, "v-other"),
        ]
    }
    unscored = uuid.uuid4()  # a bundle without limits: neither flagged nor scored
    results[unscored] = _stored(Captioned(caption_result(), 1, 1, "v-none"))
    stale = list(results)[1]  # its attempt was claimed again: not stored, not counted
    count_flagged(results, [job_id for job_id in results if job_id != stale])
    after = counted("v-count"), counted("v-other"), counted("v-none")
    gained = [(f - f0, s - s0) for (f, s), (f0, s0) in zip(after, before, strict=True)]
    assert gained == [(1, 2), (1, 1), (0, 0)]  # v-count: 1 of its 2 stored jobs flagged


@pytest.mark.parametrize(
    "metrics, expected",
    [(LIMITED, (0.03, 1.5)), ({"val": {"bleu4": 0.5}}, (None, None))],
    ids=["with-limits", "an-older-bundle"],
)
def test_the_registry_shows_each_versions_calibration_error_and_ood_threshold(
    client, app, metrics, expected
):
    with app.extensions["captioner"].db.session() as session:
        version = registry.register(session, new_version(metrics)).version
    shown = client.get(f"/v1/models/{version}").get_json()
    assert (shown["calibration_error"], shown["ood_threshold"]) == expected
    ModelVersionSchema.model_validate(shown)
    listed = client.get("/v1/models").get_json()["models"]
    assert next(m for m in listed if m["version"] == version) == shown


def new_version(metrics: dict) -> registry.NewVersion:
    return registry.NewVersion(
        digest=uuid.uuid4().hex,
        metrics=metrics,
        encoder_weights="seed:0",
        encoder_fingerprint="f",
        architecture={"decoder": "gru"},
    )


def test_a_training_run_reports_the_limits_of_the_version_it_made():
    run = SimpleNamespace(promotion={"policy": "never"})
    bundle = SimpleNamespace(metrics=LIMITED)
    decision = Training._decide(None, run, bundle, None, [])  # "never": no registry asked
    assert (decision["calibration_error"], decision["ood_threshold"]) == (0.03, 1.5)
    PromotionResult.model_validate(decision)
    assert bundle_limits({}) == {"calibration_error": None, "ood_threshold": None}

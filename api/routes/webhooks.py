"""Webhooks: the signing secret (show, rotate), each resource's delivery log, and replay."""

from __future__ import annotations

import uuid
from datetime import timedelta

from flask import Blueprint, jsonify

from api.auth import requires, tenant
from api.contract import contract, validated
from api.errors import found
from api.lookups import find_batch, find_job, find_run
from api.schemas import webhooks as schema
from api.schemas.base import Problem
from api.services import services
from core.errors import ErrorResponse
from store import deliveries, webhook_secrets
from store.payloads import delivery_json, iso
from store.tables import Scope

bp = Blueprint("webhooks", __name__, url_prefix="/v1")


@bp.get("/webhooks/secret")
@contract(schema.WebhookSecret, tags=["webhooks"])
@requires(Scope.JOBS)
def get_secret():
    """The secret webhooks are signed with, and rotated-out ones still valid."""
    with services().db.session() as session:
        in_use = webhook_secrets.secrets_in_use(session, tenant(), services().cipher)
        return jsonify(secrets_json(in_use))


@bp.post("/webhooks/secret/rotate")
@contract(schema.WebhookSecret, json=schema.RotateSecret, body_required=False, tags=["webhooks"])
@requires(Scope.JOBS)
def rotate_secret():
    """A new secret; the old one keeps signing for `grace_seconds` (default: the setting)."""
    grace = validated().grace_seconds
    if grace is None:
        grace = services().settings.webhook_secret_grace_s
    with services().db.session() as session:
        rotated = webhook_secrets.rotate(
            session, tenant(), timedelta(seconds=grace), services().cipher
        )
        return jsonify(secrets_json(rotated))


def secrets_json(in_use) -> dict:
    """The current secret first, then the previous ones with their expiry."""
    current, *previous = in_use
    return {
        "secret": current.secret,
        "created_at": iso(current.created_at),
        "previous": [{"secret": s.secret, "expires_at": iso(s.expires_at)} for s in previous],
    }


@bp.get("/jobs/<uuid:job_id>/deliveries")
@contract(schema.DeliveryList, tags=["webhooks"])
@requires(Scope.JOBS)
def job_deliveries(job_id: uuid.UUID):
    """Every webhook delivery of a job, with its attempts."""
    with services().db.session() as session:
        find_job(session, job_id)
        return jsonify(deliveries_json(session, job_id))


@bp.get("/batches/<uuid:batch_id>/deliveries")
@contract(schema.DeliveryList, tags=["webhooks"])
@requires(Scope.JOBS)
def batch_deliveries(batch_id: uuid.UUID):
    """Every webhook delivery of a batch, with its attempts."""
    with services().db.session() as session:
        find_batch(session, batch_id)
        return jsonify(deliveries_json(session, batch_id))


@bp.get("/training-runs/<uuid:run_id>/deliveries")
@contract(schema.DeliveryList, tags=["webhooks"])
@requires(Scope.TRAINING)
def run_deliveries(run_id: uuid.UUID):
    """Every webhook delivery of a training run (progress included), with its attempts."""
    with services().db.session() as session:
        find_run(session, run_id)
        return jsonify(deliveries_json(session, run_id))


def deliveries_json(session, resource_id: uuid.UUID) -> dict:
    """A resource's deliveries, oldest first."""
    found = deliveries.list_deliveries(session, resource_id)
    attempts = deliveries.attempts_of(session, [d.id for d in found])
    return {"deliveries": [delivery_json(d, attempts[d.id]) for d in found]}


@bp.get("/deliveries/<uuid:delivery_id>")
@contract(schema.Delivery, tags=["webhooks"])
@requires(Scope.JOBS)
def get_delivery(delivery_id: uuid.UUID):
    """One delivery with its attempts."""
    with services().db.session() as session:
        return jsonify(one_delivery_json(session, find_delivery(session, delivery_id)))


@bp.post("/deliveries/<uuid:delivery_id>/replay")
@contract(schema.Delivery, status=202, more={409: Problem}, tags=["webhooks"])
@requires(Scope.JOBS)
def replay_delivery(delivery_id: uuid.UUID):
    """Send a delivery again, same webhook-id, from the start of the schedule: 202."""
    with services().db.session() as session:
        delivery = find_delivery(session, delivery_id)
        if not deliveries.replay(session, delivery_id):
            raise ErrorResponse(
                409, "delivery_in_flight", "an attempt is in flight; replay it after"
            )
        session.refresh(delivery)
        body = one_delivery_json(session, delivery)
    return jsonify(body), 202


def one_delivery_json(session, delivery) -> dict:
    """A delivery with its attempts."""
    return delivery_json(delivery, deliveries.attempts_of(session, [delivery.id])[delivery.id])


def find_delivery(session, delivery_id: uuid.UUID):
    """The caller's delivery or a 404."""
    return found(deliveries.get_delivery(session, delivery_id, tenant()), "delivery", delivery_id)

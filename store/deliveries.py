"""Webhook deliveries: an outbox row per event, claimed for each attempt, with an attempt log.

A delivery is recorded in the same transaction as the status change it announces, so it is
owed even if the process dies right after; its id is also left in `session.info[NEW]` for
whoever sends work to the webhooks queue once the session commits. Every state change is one
guarded UPDATE, so two senders never make the same attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from store.db import insert_or_ignore
from store.payloads import iso
from store.tables import Delivery, DeliveryAttempt, DeliveryStatus, utcnow

NEW = "new_deliveries"  # session.info key: ids of deliveries recorded in this session
PENDING, SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value


@dataclass(frozen=True)
class Event:
    """Something to announce: which resource, what happened, where to send it, and the payload."""

    owner: str
    resource_type: str  # job | batch | training_run
    resource_id: uuid.UUID
    event: str  # e.g. job.completed
    url: str
    data: dict[str, Any]  # what GET returns for the resource


@dataclass(frozen=True)
class AttemptRecord:
    """The outcome of one POST."""

    started_at: datetime
    latency_ms: float
    status_code: int | None
    error: str | None  # None on a 2xx
    response: str | None  # the start of the response body


def record_event(session: Session, event: Event, sequence: int = 0) -> bool:
    """Add a pending delivery, due now; False when the resource's event was already recorded.

    `sequence` numbers the repeats of an event that happens more than once (progress).
    """
    now = utcnow()
    body = {"type": event.event, "timestamp": iso(now), "data": event.data}
    row = {
        "id": uuid.uuid4(),
        "owner": event.owner,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "event": event.event,
        "sequence": sequence,
        "url": event.url,
        "body": json.dumps(body, separators=(",", ":")),
        "status": PENDING,
        "attempts": 0,
        "step": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    inserted = insert_or_ignore(
        session, Delivery, row, index_elements=["resource_id", "event", "sequence"]
    )
    if inserted.rowcount != 1:
        return False
    session.info.setdefault(NEW, []).append(row["id"])
    return True


def after_commit_sender(send: Callable[[list], object]) -> Callable[[dict], None]:
    """A `Database.after_commit` hook handing `send` the deliveries a transaction recorded."""

    def hook(info: dict) -> None:
        if info.get(NEW):
            send(info.pop(NEW))

    return hook


def retried(event: str) -> bool:
    """Whether a failed attempt is tried again: not for progress, which the next one replaces."""
    return not event.endswith(".progress")


def was_recorded(session: Session, resource_id: uuid.UUID, event: str) -> bool:
    """Whether this event of the resource already has a delivery (saves building its payload)."""
    query = select(Delivery.id).where(Delivery.resource_id == resource_id, Delivery.event == event)
    return session.scalar(query) is not None


def claim(session: Session, delivery_id: uuid.UUID, lease: timedelta) -> Delivery | None:
    """Take a due delivery for one attempt (attempts + 1, leased), or None when it is not ours.

    A delivery waits while an earlier one of the same resource has not made its first attempt
    yet, so `started` reaches the endpoint before `completed`.
    """
    now = utcnow()
    earlier = aliased(Delivery)
    blocked = exists().where(
        earlier.resource_id == Delivery.resource_id,
        earlier.created_at < Delivery.created_at,
        or_(earlier.status == SENDING, and_(earlier.status == PENDING, earlier.attempts == 0)),
    )
    due = and_(
        Delivery.id == delivery_id,
        Delivery.status == PENDING,
        Delivery.next_attempt_at <= now,
        ~blocked,
    )
    values = {"status": SENDING, "attempts": Delivery.attempts + 1, "lease_expires_at": now + lease}
    statement = update(Delivery).where(due).values(**values).returning(Delivery)
    options = {"synchronize_session": False, "populate_existing": True}
    return session.scalars(statement, execution_options=options).first()


def finish_attempt(
    session: Session, delivery: Delivery, record: AttemptRecord, retry_at: datetime | None
) -> str:
    """Log the attempt and settle the delivery: delivered, retried at `retry_at`, or failed."""
    session.execute(
        insert(DeliveryAttempt).values(
            delivery_id=delivery.id,
            number=delivery.attempts,
            started_at=record.started_at,
            latency_ms=record.latency_ms,
            status_code=record.status_code,
            error=record.error,
            response=record.response,
        )
    )
    if record.error is None:
        values = {"status": DeliveryStatus.DELIVERED.value, "finished_at": utcnow()}
    elif retry_at is not None:
        values = {"status": PENDING, "step": delivery.step + 1, "next_attempt_at": retry_at}
    else:
        values = {"status": DeliveryStatus.FAILED.value, "finished_at": utcnow()}
    mine = and_(Delivery.id == delivery.id, Delivery.status == SENDING)
    session.execute(update(Delivery).where(mine).values(**values, lease_expires_at=None))
    return values["status"]


def stop_endpoint(session: Session, owner: str, url: str) -> int:
    """Give up every pending delivery of `owner` to `url` (it answered 410 Gone)."""
    pending = and_(Delivery.owner == owner, Delivery.url == url, Delivery.status == PENDING)
    values = {"status": DeliveryStatus.FAILED.value, "finished_at": utcnow()}
    return session.execute(update(Delivery).where(pending).values(**values)).rowcount


def free_expired_leases(session: Session) -> int:
    """Deliveries whose sender died mid-attempt (the lease ran out) become pending, due now."""
    now = utcnow()
    expired = and_(Delivery.status == SENDING, Delivery.lease_expires_at < now)
    freed = {"status": PENDING, "lease_expires_at": None, "next_attempt_at": now}
    return session.execute(update(Delivery).where(expired).values(**freed)).rowcount


def due_ids(session: Session, resource_id: uuid.UUID | None = None, slack=timedelta()) -> list:
    """Ids of pending deliveries due `slack` ago (of one resource, if given), oldest first."""
    query = select(Delivery.id).where(
        Delivery.status == PENDING, Delivery.next_attempt_at <= utcnow() - slack
    )
    if resource_id is not None:
        query = query.where(Delivery.resource_id == resource_id)
    return list(session.scalars(query.order_by(Delivery.next_attempt_at).limit(1000)))


def replay(session: Session, delivery_id: uuid.UUID) -> bool:
    """Send a delivery again from the start of the schedule, with the same webhook-id.

    False while an attempt is in flight.
    """
    idle = and_(Delivery.id == delivery_id, Delivery.status != SENDING)
    values = {"status": PENDING, "step": 0, "next_attempt_at": utcnow(), "finished_at": None}
    if session.execute(update(Delivery).where(idle).values(**values)).rowcount != 1:
        return False
    session.info.setdefault(NEW, []).append(delivery_id)
    return True


def get_delivery(session: Session, delivery_id: uuid.UUID, owner: str) -> Delivery | None:
    """The owner's delivery, or None."""
    delivery = session.get(Delivery, delivery_id)
    return delivery if delivery is not None and delivery.owner == owner else None


def list_deliveries(session: Session, resource_id: uuid.UUID) -> list[Delivery]:
    """A resource's deliveries, oldest first."""
    query = select(Delivery).where(Delivery.resource_id == resource_id)
    return list(session.scalars(query.order_by(Delivery.created_at)))


def attempts_of(session: Session, delivery_ids: list[uuid.UUID]) -> dict[uuid.UUID, list]:
    """Each delivery's attempts, in order."""
    query = select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(delivery_ids))
    found: dict[uuid.UUID, list] = {delivery_id: [] for delivery_id in delivery_ids}
    for attempt in session.scalars(query.order_by(DeliveryAttempt.id)):
        found[attempt.delivery_id].append(attempt)
    return found

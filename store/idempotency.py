"""Idempotency keys: the first request sent with a key claims it, and its answer is kept for 24 h.

The row's primary key (tenant, key) is the lock: `begin` inserts it with ON CONFLICT DO NOTHING,
so of any number of concurrent requests exactly one gets `Outcome.STARTED` and runs. It then
`finish`es (the answer is recorded for replay) or `forget`s (the row is deleted, so a retry runs
again). A row's `created_at` identifies the claim: a request whose row was taken over (it ran
past `ABANDONED_AFTER`) or purged changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from store.db import insert_or_ignore
from store.tables import IdempotencyKey, utcnow

KEEP_FOR = timedelta(hours=24)  # a key is remembered this long, then may be used afresh
ABANDONED_AFTER = timedelta(minutes=5)  # an unfinished claim this old: its process died


class Outcome(enum.StrEnum):
    """What `begin` found for a key."""

    STARTED = "started"  # the key is ours: run the request, then `finish` or `forget`
    REPLAY = "replay"  # the same request was answered: send `Claim.answer` again
    IN_USE = "in_use"  # the same request is being handled right now
    REUSED = "reused"  # the key was first used with another request


@dataclass(frozen=True)
class Answer:
    """A recorded response: status, the headers worth replaying, and the body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Claim:
    """The outcome of `begin`; `started_at` names our row (STARTED), `answer` is for REPLAY."""

    outcome: Outcome
    started_at: datetime | None = None
    answer: Answer | None = None


def begin(
    session: Session, tenant: str, key: str, fingerprint: str, now: datetime | None = None
) -> Claim:
    """Claim `key` for a request with `fingerprint`, or say why not (commit before running it)."""
    now = now or utcnow()
    stale = or_(
        IdempotencyKey.created_at < now - KEEP_FOR,
        and_(
            IdempotencyKey.status_code.is_(None), IdempotencyKey.created_at < now - ABANDONED_AFTER
        ),
    )
    session.execute(delete(IdempotencyKey).where(_row(tenant, key), stale))
    values = {"tenant": tenant, "key": key, "fingerprint": fingerprint, "created_at": now}
    if insert_or_ignore(session, IdempotencyKey, values, index_elements=["tenant", "key"]).rowcount:
        return Claim(Outcome.STARTED, started_at=now)
    row = session.execute(
        select(
            IdempotencyKey.fingerprint,
            IdempotencyKey.status_code,
            IdempotencyKey.headers,
            IdempotencyKey.body,
        ).where(_row(tenant, key))
    ).first()
    if row is None:  # forgotten since the insert: the first try failed, and this one may retry
        return Claim(Outcome.IN_USE)
    if row.fingerprint != fingerprint:
        return Claim(Outcome.REUSED)
    if row.status_code is None:
        return Claim(Outcome.IN_USE)
    return Claim(Outcome.REPLAY, answer=Answer(row.status_code, row.headers or {}, row.body or b""))


def finish(session: Session, tenant: str, key: str, started_at: datetime, answer: Answer) -> bool:
    """Record the answer of the claim begun at `started_at`; False if the row is no longer ours."""
    result = session.execute(
        update(IdempotencyKey)
        .where(*_ours(tenant, key, started_at))
        .values(status_code=answer.status, headers=answer.headers, body=answer.body)
    )
    return result.rowcount == 1


def forget(session: Session, tenant: str, key: str, started_at: datetime) -> bool:
    """Delete the unfinished claim begun at `started_at`, so that a retry runs afresh."""
    return (
        session.execute(delete(IdempotencyKey).where(*_ours(tenant, key, started_at))).rowcount == 1
    )


def purge_expired(session: Session, older_than: timedelta | datetime = KEEP_FOR) -> int:
    """Delete the keys first used more than `older_than` ago (or before it); how many."""
    cutoff = older_than if isinstance(older_than, datetime) else utcnow() - older_than
    return session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff)
    ).rowcount


def _row(tenant: str, key: str):
    return and_(IdempotencyKey.tenant == tenant, IdempotencyKey.key == key)


def _ours(tenant: str, key: str, started_at: datetime) -> tuple:
    return (
        _row(tenant, key),
        IdempotencyKey.created_at == started_at,
        IdempotencyKey.status_code.is_(None),
    )

"""Each owner's webhook signing secrets: one current, plus rotated-out ones during their grace."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.signatures import new_secret
from store.db import insert_or_ignore
from store.models import WebhookSecret, utcnow


def secrets_in_use(session: Session, owner: str) -> list[WebhookSecret]:
    """The current secret first (created on first use), then those still in their grace period."""
    now = utcnow()
    valid = or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now)
    query = select(WebhookSecret).where(WebhookSecret.owner == owner, valid)
    found = list(session.scalars(query.order_by(WebhookSecret.expires_at.is_(None).desc(),
                                                WebhookSecret.id.desc())))  # fmt: skip
    if found and found[0].expires_at is None:
        return found
    _create_current(session, owner)
    return secrets_in_use(session, owner)


def rotate(session: Session, owner: str, grace: timedelta) -> list[WebhookSecret]:
    """A new current secret; the old one stays valid (and signs too) for `grace`."""
    secrets_in_use(session, owner)  # there is a current secret to rotate out
    current = (WebhookSecret.owner == owner) & WebhookSecret.expires_at.is_(None)
    session.execute(update(WebhookSecret).where(current).values(expires_at=utcnow() + grace))
    _create_current(session, owner)
    return secrets_in_use(session, owner)


def _create_current(session: Session, owner: str) -> None:
    # Two first uses at once: the partial unique index keeps one current secret; the other
    # insert does nothing.
    values = {"owner": owner, "secret": new_secret(), "created_at": utcnow()}
    insert_or_ignore(session, WebhookSecret, values, index_elements=["owner"],
                     index_where=WebhookSecret.expires_at.is_(None))  # fmt: skip

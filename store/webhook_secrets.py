"""Each owner's webhook signing secrets: one current, plus rotated-out ones during their grace.

They are stored encrypted (core.credentials.Cipher): a database dump shows none in clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.credentials import Cipher
from core.signatures import new_secret
from store.db import insert_or_ignore
from store.tables import WebhookSecret, utcnow


@dataclass(frozen=True)
class Secret:
    """A signing secret in clear, with when it was made and when it stops being valid."""

    secret: str
    created_at: datetime
    expires_at: datetime | None


def secrets_in_use(session: Session, owner: str, cipher: Cipher) -> list[Secret]:
    """The current secret first (created on first use), then those still in their grace period."""
    now = utcnow()
    valid = or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now)
    query = select(WebhookSecret).where(WebhookSecret.owner == owner, valid)
    found = list(
        session.scalars(
            query.order_by(WebhookSecret.expires_at.is_(None).desc(), WebhookSecret.id.desc())
        )
    )
    if found and found[0].expires_at is None:
        return [Secret(cipher.decrypt(s.secret), s.created_at, s.expires_at) for s in found]
    _create_current(session, owner, cipher)
    return secrets_in_use(session, owner, cipher)


def rotate(session: Session, owner: str, grace: timedelta, cipher: Cipher) -> list[Secret]:
    """A new current secret; the old one stays valid (and signs too) for `grace`."""
    secrets_in_use(session, owner, cipher)  # there is a current secret to rotate out
    current = (WebhookSecret.owner == owner) & WebhookSecret.expires_at.is_(None)
    session.execute(update(WebhookSecret).where(current).values(expires_at=utcnow() + grace))
    _create_current(session, owner, cipher)
    return secrets_in_use(session, owner, cipher)


def reencrypt(session: Session, cipher: Cipher) -> int:
    """Encrypt every stored secret again with the cipher's first key (after a key rotation, or
    secrets stored in clear before encryption); how many there were."""
    rows = list(session.scalars(select(WebhookSecret).with_for_update()))
    for row in rows:
        row.secret = cipher.rotate(row.secret)
    return len(rows)


def _create_current(session: Session, owner: str, cipher: Cipher) -> None:
    # Two first uses at once: the partial unique index keeps one current secret; the other
    # insert does nothing.
    values = {"owner": owner, "secret": cipher.encrypt(new_secret()), "created_at": utcnow()}
    insert_or_ignore(
        session,
        WebhookSecret,
        values,
        index_elements=["owner"],
        index_where=WebhookSecret.expires_at.is_(None),
    )

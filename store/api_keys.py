"""API keys: made for a tenant with scopes, found by their digest, revoked, listed."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.credentials import SHOWN_PREFIX, hash_api_key, new_api_key
from store.db import Database
from store.tables import ALL_SCOPES, ApiKey, as_utc, utcnow

TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's id, its tenant and scopes."""

    key_id: uuid.UUID
    tenant: str
    scopes: frozenset[str]


def create_key(
    session: Session, tenant: str, scopes: Iterable[str], name: str = ""
) -> tuple[ApiKey, str]:
    """A new key: its row and the key itself, which exists nowhere else (show it once)."""
    scopes = sorted(set(scopes))
    unknown = set(scopes) - set(ALL_SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {list(ALL_SCOPES)}, not {scopes}")
    key = new_api_key()
    row = ApiKey(
        id=uuid.uuid4(),
        tenant=tenant,
        name=name,
        scopes=scopes,
        created_at=utcnow(),
        prefix=key[:SHOWN_PREFIX],
        key_hash=hash_api_key(key),
    )
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Caller | None:
    """The caller a key belongs to, or None (unknown or revoked); notes when it was used."""
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant, ApiKey.scopes, ApiKey.last_used_at).where(
            ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - as_utc(row.last_used_at) > TOUCH_EVERY:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return Caller(row.id, row.tenant, frozenset(row.scopes))


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """Keys newest first, of one tenant or all."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def get_key(session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """One key's row."""
    return session.get(ApiKey, key_id)


def revoke(session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """Revoke a key from now on (revoking twice keeps the first time); None if unknown."""
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    row = session.get(ApiKey, key_id)
    if row is not None:
        session.refresh(row)
    return row


class KnownKeys:
    """Callers of keys checked in the last `ttl_s` seconds, so a client sending many requests
    costs one database round trip per key every `ttl_s`, not one per request. A key revoked
    through this process stops at once (`forget`); in the other processes within `ttl_s`."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db, self.ttl_s = db, ttl_s
        self._known: dict[str, tuple[Caller, float]] = {}  # digest → (caller, checked at)
        self._lock = threading.Lock()

    def caller(self, key: str) -> Caller | None:
        """The caller a key belongs to, or None (unknown or revoked)."""
        digest, now = hash_api_key(key), time.monotonic()
        with self._lock:
            caller, checked = self._known.get(digest, (None, -math.inf))
        if now - checked < self.ttl_s:
            return caller
        with self.db.session() as session:
            caller = authenticate(session, key)
        with self._lock:
            if caller is None:
                self._known.pop(digest, None)
            else:
                self._known[digest] = (caller, now)
        return caller

    def forget(self, key_id: uuid.UUID) -> None:
        """Check the key `key_id` again at its next request (it was just revoked)."""
        with self._lock:
            self._known = {d: e for d, e in self._known.items() if e[0].key_id != key_id}

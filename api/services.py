"""What the API talks to: the database, the blob store and the broker, built once per app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app

from core.broker import Broker, make_celery
from core.credentials import Cipher, cipher_for
from core.netguard import Resolver, system_resolver
from core.notify import Notifier
from core.settings import Settings
from store.api_keys import KnownKeys
from store.blobs import BlobStore, open_blob_store
from store.db import Database
from store.deliveries import after_commit_sender
from store.queue_counts import QueuedCounts


@dataclass
class Services:
    """The app's connections; tests may build one with their own parts."""

    settings: Settings
    db: Database
    blobs: BlobStore
    broker: Broker
    notifier: Notifier
    cipher: Cipher
    queued: QueuedCounts  # the queue's length per tenant, for the submissions' bound
    keys: KnownKeys  # the API keys checked lately
    resolver: Resolver = system_resolver  # the SSRF guard's DNS; tests pass a fake one

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        """Connections as the settings describe them (nothing is contacted yet)."""
        broker = Broker(make_celery(settings), logging.getLogger("api"))
        db = Database(settings.database_url, pool_size=settings.db_pool_size)
        db.after_commit.append(after_commit_sender(broker.deliveries))
        return cls(
            settings,
            db,
            open_blob_store(settings),
            broker,
            Notifier(settings.broker_url),
            cipher_for(settings),
            QueuedCounts(db),
            KnownKeys(db, settings.key_cache_s),
        )


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["captioner"]

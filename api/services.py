"""What the API talks to: the database, the blob store and the broker, built once per app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from flask import current_app

from captioner.broker import delivery_sender, make_celery
from captioner.notify import Notifier
from captioner.settings import Settings
from store.blobs import BlobStore, open_blob_store
from store.db import Database


@dataclass
class Services:
    """The app's connections; tests may build one with their own parts."""

    settings: Settings
    db: Database
    blobs: BlobStore
    celery: Celery
    notifier: Notifier

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        """Connections as the settings describe them (nothing is contacted yet)."""
        celery, db = make_celery(settings), Database(settings.database_url)
        db.after_commit.append(delivery_sender(celery, logging.getLogger("api")))
        return cls(settings, db, open_blob_store(settings), celery, Notifier(settings.broker_url))


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["captioner"]

"""Test helper (not a test module): migrated databases for the store tests, and a new job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from harness.stack import fresh_postgres


@contextmanager
def migrated_database(kind: str, folder) -> Iterator:
    """A `store.db.Database` migrated to the newest schema: a fresh Postgres database
    (`kind="postgres"`) or a SQLite file in `folder`; disposed of afterwards."""
    from store.db import Database
    from store.migrate import upgrade

    url_context = (
        fresh_postgres() if kind == "postgres" else nullcontext(f"sqlite:///{folder / 'store.db'}")
    )
    with url_context as url:
        upgrade(url)
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


def new_job(**changes):
    """A `store.jobs.NewJob` for a small PNG of owner "tenant", with `changes`."""
    from store.jobs import NewJob

    fields = dict(
        owner="tenant",
        image_key="images/x",
        image_bytes=10,
        image_format="PNG",
        image_width=4,
        image_height=3,
    )
    return NewJob(**(fields | changes))

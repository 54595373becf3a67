"""Throwaway databases for tests: a fresh Postgres database per use, or a SQLite file."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import create_engine, text

# The server's maintenance database; tests create and drop their own databases beside it.
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    name = f"captioner_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_database(kind: str, folder) -> Iterator:
    """A `store.db.Database` migrated to the newest schema: a fresh Postgres database
    (`kind="postgres"`) or a SQLite file in `folder`; disposed of afterwards."""
    from store.db import Database
    from store.migrate import upgrade

    with (
        fresh_postgres()
        if kind == "postgres"
        else nullcontext(f"sqlite:///{folder / 'store.db'}") as url
    ):
        upgrade(url)
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


def new_job(**changes):
    """A `store.jobs.NewJob` for a small PNG of owner "tenant", with `changes`."""
    from store.jobs import NewJob

    fields = dict(owner="tenant", image_key="images/x", image_bytes=10, image_format="PNG",
                  image_width=4, image_height=3)  # fmt: skip
    return NewJob(**(fields | changes))

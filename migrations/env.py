"""Alembic environment: the URL comes from the caller or, failing that, from the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from store.tables import Base


def database_url() -> str:
    """The URL given by `store.migrate` (config option) or read from the environment."""
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from core.settings import from_env

    return from_env().database_url


def run_offline() -> None:
    """Emit SQL without a connection (`alembic upgrade head --sql`)."""
    context.configure(url=database_url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Apply migrations over a connection."""
    engine = create_engine(database_url())
    with engine.connect() as connection:
        # SQLite cannot ALTER most things: batch mode rebuilds tables instead.
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

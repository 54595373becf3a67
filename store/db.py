"""Database engine and sessions (Postgres in production, SQLite in the embedded mode)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core.errors import StoreUnavailable


class Database:
    """An engine and its session factory; `session()` commits or rolls back.

    `after_commit` holds callables run with `session.info` once a session has committed (the
    API and workers use it to send the webhook deliveries a transaction recorded).
    """

    def __init__(self, url: str, echo: bool = False, pool_size: int = 16) -> None:
        self.url = url
        self.engine = make_engine(url, echo, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.after_commit: list[Callable[[dict], None]] = []

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error; StoreUnavailable when
        the database cannot be reached (the pool's pre-ping reconnects once it is back)."""
        try:
            with self._sessions() as session:
                with session.begin():
                    yield session
                for hook in self.after_commit:
                    hook(session.info)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            if self.engine.dialect.name == "postgresql" and unreachable(exc):
                raise StoreUnavailable(
                    f"the database cannot be reached: {exc.__class__.__name__}"
                ) from exc
            raise

    def check(self) -> None:
        """Raise unless the database answers a trivial query (for /readyz)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close pooled connections (after a fork, or at shutdown)."""
        self.engine.dispose()


def unreachable(exc: Exception) -> bool:
    """Whether a database error says the server cannot be reached now, rather than that a
    statement is wrong: connection refused or dropped, or no pooled connection free in time.

    psycopg2 raises its base OperationalError for those, and subclasses of it for deadlocks and
    cancelled statements, which are not outages."""
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    return exc.connection_invalidated or type(exc.orig).__name__ == "OperationalError"


def insert_or_ignore(session: Session, model, values: dict, **conflict):
    """INSERT … ON CONFLICT DO NOTHING on either database (rowcount 0: the row existed).

    `conflict` names the unique index: index_elements, and index_where for a partial one.
    """
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(model).values(**values).on_conflict_do_nothing(**conflict)
    return session.execute(statement)


def create_database(server_url: str, name: str) -> None:
    """CREATE DATABASE `name` on the Postgres server that `server_url` connects to."""
    _as_admin(server_url, f'CREATE DATABASE "{name}"')


def drop_database(server_url: str, name: str) -> None:
    """Drop the database `name` (closing its connections), if it exists."""
    _as_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _as_admin(server_url: str, statement: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(statement))
    finally:
        admin.dispose()


def make_engine(url: str, echo: bool = False, pool_size: int = 16) -> Engine:
    """An engine with pre-ping (servers restart) and, for SQLite, WAL and a busy timeout.

    `pool_size` Postgres connections stay open once made; a burst beyond them opens as many
    more, closed when returned (each a backend that starts and exits: several milliseconds
    of Postgres CPU, more than a submission's own queries). So the pool is sized to the
    threads that use the database at once (`DB_POOL_SIZE`), not left at SQLAlchemy's 5.

    On Postgres an UPDATE run for many rows (a worker storing a chunk's results) goes in pages
    of statements per round trip (psycopg2's execute_batch), not one round trip per row.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        executemany_mode="values_plus_batch",
    )


def _sqlite_pragmas(connection, _record) -> None:
    # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()

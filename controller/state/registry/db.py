"""Registry database: engine from a URL (SQLite by default, PostgreSQL by URL), migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from runners.errors import RetryableError

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK_KEY = 0x6C6C6D6F7073  # "llmops": PostgreSQL advisory lock of the migrations


class RegistryUnavailable(RetryableError):
    """The registry database cannot be opened; the message says what to do."""


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: object) -> None:
    # busy_timeout first: switching a new database to WAL needs a brief exclusive lock, and
    # several processes opening it at once (parallel writers, apply beside the dashboard)
    # must wait for each other rather than fail with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL is a property of the file: set it once, not on every connection.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise RegistryUnavailable(
            f"LLMOPS_REGISTRY_URL is not a database URL: {err}; "
            "use sqlite:///path/registry.db or postgresql+psycopg://user@host/db"
        ) from err
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite") and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, future=True, pool_pre_ping=True)
    if parsed.drivername.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def head_revision() -> str:
    heads = sorted(p.stem.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("*.py"))
    return heads[-1]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; a no-op (one query) when it is current."""
    try:
        if current_revision(engine) == head_revision():
            return
    except OperationalError as err:
        raise RegistryUnavailable(f"cannot open the registry database: {err.orig}") from err
    from alembic import command
    from alembic.config import Config

    with _migration_lock(engine):
        if current_revision(engine) == head_revision():  # another process migrated meanwhile
            return
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migration at a time: processes opening a new registry at once (apply beside the
    dashboard, parallel writers) would otherwise both create its tables ("table already
    exists"), since SQLite runs DDL outside the transaction. SQLite: a file lock beside the
    database; PostgreSQL: an advisory lock, held by one connection for the migration."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with FileLock(f"{database}.migrate.lock"):
            yield
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
    else:
        yield


def open_session_factory(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)

"""The database: an engine and sessions, for SQLite (default) or PostgreSQL.

``Database(url)`` checks the URL but does not connect; ``ping()`` does. Each
unit of work is one ``with db.session() as s:`` block, committed when the
block ends normally and rolled back when it raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import BackendUnavailable, ConfigurationError

DATABASE_URL_SETTING = "TAILOR_DATABASE_URL"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def parse_database_url(raw: str) -> URL:
    """Validate a database URL and pin the driver Tailor ships with."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(
            DATABASE_URL_SETTING,
            "not a database URL (expected e.g. sqlite:///var/tailor.db or "
            "postgresql://user@host:5432/db)",
        ) from None
    backend = url.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            DATABASE_URL_SETTING,
            f"unsupported database {backend!r}; use one of: {', '.join(SUPPORTED_BACKENDS)}",
        )
    if backend == "postgresql":
        # psycopg 3 is the driver installed with Tailor; a bare postgresql://
        # would make SQLAlchemy look for psycopg2.
        return url.set(drivername="postgresql+psycopg")
    if not url.database or url.database == ":memory:":
        raise ConfigurationError(
            DATABASE_URL_SETTING,
            "an in-memory SQLite database loses everything on exit; give a file path",
        )
    return url


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN in ways that break
        # SAVEPOINTs and read-then-write atomicity; let SQLAlchemy emit BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL lets readers proceed while one writer commits.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front. With a deferred BEGIN, two
        # transactions that read and then write deadlock, and SQLite fails one
        # at once ("database is locked") instead of letting it wait. The cost
        # is that transactions run one at a time: fine for the embedded
        # single-machine mode; PostgreSQL is the choice for concurrency.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine plus a session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = parse_database_url(url)
        self.backend = self.url.get_backend_name()
        if self.backend == "sqlite":
            assert self.url.database is not None
            Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, echo=echo)
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(
                self.url,
                echo=echo,
                pool_pre_ping=True,
                connect_args={"connect_timeout": 5},
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, fit for logs and messages."""
        return self.url.render_as_string(hide_password=True)

    def new_session(self) -> Session:
        """A session the caller commits itself (e.g. an HTTP request's)."""
        return self._sessions()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed at the end of the block, rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Connect once; raise ``BackendUnavailable`` naming the setting if that fails."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise BackendUnavailable(
                DATABASE_URL_SETTING, f"cannot connect to {self.safe_url}: {reason}"
            ) from None

    def dispose(self) -> None:
        self.engine.dispose()

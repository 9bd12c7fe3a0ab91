"""The database: an engine and sessions, for SQLite (default) or PostgreSQL.

``Database(url)`` checks the URL but does not connect; ``ping()`` does. Each
unit of work is one ``with db.session() as s:`` block, committed when the
block ends normally and rolled back when it raises.

Invariant: a failure that means the database cannot be used right now (it is
down, unreachable, restarting, out of connections, locked past the busy
timeout, its file cannot be opened) surfaces as
``BackendUnavailable("TAILOR_DATABASE_URL", ...)`` from *every* statement,
begin, commit and connect of the engine, whichever session or connection ran
it, so that callers see one storage error and the API answers 503. Errors of
the statement itself (a constraint, a missing table, bad SQL) keep their
SQLAlchemy type. The translation sits on the engine (``handle_error``) rather
than around ``session()`` because request sessions (``new_session()``)
connect lazily, at their first query, outside any block of ours.

The pool pre-pings PostgreSQL connections before use, so a restarted server
is picked up by the next request without restarting Tailor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from storage.errors import BackendUnavailable, ConfigurationError

DATABASE_URL_SETTING = "TAILOR_DATABASE_URL"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")

# SQLSTATE classes and codes of PostgreSQL that say the server cannot serve
# this connection now, whatever the statement: 08 connection exception,
# 53 insufficient resources (disk full, out of memory, too many connections),
# 58 system error (I/O), and the shutdown/startup codes of class 57. Not the
# rest of 57: 57014 is a cancelled query (e.g. a statement timeout).
_PG_UNAVAILABLE_CLASSES = ("08", "53", "58")
_PG_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})

# SQLite primary result codes (sqlite3.h) that say the file cannot be used
# now, whatever the statement. Not CORRUPT or NOTADB: waiting does not help
# there, and an operator must look (500, logged with its traceback).
_SQLITE_UNAVAILABLE = frozenset(
    {
        5,  # SQLITE_BUSY: another writer held the lock past busy_timeout
        6,  # SQLITE_LOCKED: a lock within this process
        8,  # SQLITE_READONLY: the file or directory lost write permission, or was moved
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL: the disk
        14,  # SQLITE_CANTOPEN: the file or its directory is gone or unreadable
    }
)


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


def is_unavailable_error(error: BaseException, dbapi: Any, *, connecting: bool) -> bool:
    """Whether a DBAPI error means the database is unavailable (not a bad statement).

    ``dbapi`` is the driver module (psycopg or sqlite3); ``connecting`` is
    true when the error came while opening a connection, where any
    operational error (refused, unknown host, authentication) leaves the
    database unusable.
    """
    if not isinstance(error, dbapi.OperationalError):
        return False
    if connecting:
        return True
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        # Extended codes (e.g. SQLITE_IOERR_SHORT_READ) keep the primary code
        # in their low byte.
        return (sqlite_code & 0xFF) in _SQLITE_UNAVAILABLE
    if hasattr(error, "sqlstate"):
        sqlstate = error.sqlstate
        # psycopg leaves sqlstate unset for failures of the client side of
        # the connection (refused, reset, "server closed the connection").
        return (
            sqlstate is None
            or sqlstate[:2] in _PG_UNAVAILABLE_CLASSES
            or sqlstate in _PG_UNAVAILABLE_CODES
        )
    return False


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


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


class _OutageAwarePool(QueuePool):
    """A queue pool whose checkout timeout is an outage (503), not a bug (500).

    Every pooled connection busy for the whole timeout means the database
    cannot take more work now. SQLAlchemy raises its own TimeoutError there,
    outside any driver call, so ``handle_error`` never sees it; the one place
    to translate it is the checkout itself (``_do_get``, the hook that Pool
    leaves to its subclasses).
    """

    # Log as the pool it extends, under "sqlalchemy" (quiet below WARNING),
    # not under this module, whose INFO lines the server prints.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except PoolTimeout as exc:
            raise BackendUnavailable(
                DATABASE_URL_SETTING, f"every database connection stayed busy: {exc}"
            ) from None


class Database:
    """An engine plus a session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False, pool_timeout_seconds: float = 30.0) -> None:
        self.url = parse_database_url(url)
        self.backend = self.url.get_backend_name()
        pool = {"poolclass": _OutageAwarePool, "pool_timeout": pool_timeout_seconds}
        if self.backend == "sqlite":
            assert self.url.database is not None
            Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, echo=echo, **pool)
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(
                self.url,
                echo=echo,
                pool_pre_ping=True,
                connect_args={"connect_timeout": 5},
                **pool,
            )
        event.listen(self.engine, "handle_error", self._on_error)
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
        except DBAPIError as exc:
            # An error that _on_error did not count as an outage; `SELECT 1`
            # failing at all still means the database cannot be used.
            orig = exc.orig if exc.orig is not None else exc
            raise self.unavailable(orig, connecting=True) from exc

    def unavailable(self, error: BaseException, *, connecting: bool) -> BackendUnavailable:
        """The ``BackendUnavailable`` for a driver error, naming the setting, never the password."""
        reason = _first_line(error)
        if self.url.password:
            reason = reason.replace(str(self.url.password), "***")
        verb = "cannot connect to" if connecting else "cannot use"
        return BackendUnavailable(DATABASE_URL_SETTING, f"{verb} {self.safe_url}: {reason}")

    def _on_error(self, context: ExceptionContext) -> None:
        if context.is_pre_ping:
            # The pool answers a failed pre-ping by opening a new connection;
            # an exception here would stop it from recovering.
            return
        error = context.original_exception
        dbapi = context.dialect.loaded_dbapi
        if not isinstance(error, dbapi.Error):
            # SQLAlchemy also counts KeyboardInterrupt or a cancelled task in
            # mid-statement as a disconnect; those must keep their own type.
            return
        # No connection in the context: the error came while connecting.
        connecting = context.connection is None
        if context.is_disconnect or is_unavailable_error(error, dbapi, connecting=connecting):
            # Raised, not returned: SQLAlchemy raises it in place of its own
            # exception, after invalidating a connection that was lost.
            raise self.unavailable(error, connecting=connecting)

    def dispose(self) -> None:
        self.engine.dispose()

"""Where the tests find the real PostgreSQL and Redis of the machine.

Both are required: a test that needs one fails (it is never skipped) when the
server is down, so that a green run always means both backends were tested.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

POSTGRES_URL = os.environ.get(
    "TAILOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TAILOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema; yields a URL whose search_path is it."""
    schema = f"tailor_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def deployment_database_url(deployment: str, tmp_path: Path) -> Iterator[str]:
    """The database of a test deployment: a SQLite file for ``sqlite+memory``,
    else a fresh PostgreSQL schema."""
    if deployment == "sqlite+memory":
        yield f"sqlite:///{tmp_path / 'tailor.db'}"
    else:
        with postgres_schema() as url:
            yield url

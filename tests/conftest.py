from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import migrate
from storage.database import Database
from tests.backends import postgres_schema

# The suite never reaches a model hub; the models come from packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend, one per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tailor.db'}"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database of each backend."""
    db = Database(database_url)
    migrate.upgrade(db)
    yield db
    db.dispose()

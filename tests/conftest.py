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

# The markers of the tests that start servers, browsers or Ray, or train (`make check`
# leaves them out).
HEAVY_MARKERS = ("slow", "e2e", "browser", "ray")


def _xdist_workers() -> int:
    """How many pytest-xdist workers run the suite (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets its share of the cores for torch and BLAS, and
    # so do the servers and fine-tune workers it starts (they inherit the environment).
    # With every process on every core, OpenMP's lock-step threads keep waiting for
    # threads the other worker's processes took the core from: test_finetune_worker.py
    # on -n 2 took 544 s so, 158 s with one thread a worker (90 s alone on -n 0).
    if _xdist_workers() > 1:
        share = max(1, len(os.sched_getaffinity(0)) // _xdist_workers())
        os.environ.setdefault("OMP_NUM_THREADS", str(share))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Under pytest-xdist, the modules with heavy tests first, each kept in its order:
    # `make test` hands each worker whole modules (--dist loadfile) in this order, so
    # the last ones handed out, when the other worker may already be idle, are quick.
    if _xdist_workers() > 1:
        heavy = {
            item.path for item in items if any(item.get_closest_marker(m) for m in HEAVY_MARKERS)
        }
        items.sort(key=lambda item: item.path not in heavy)


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

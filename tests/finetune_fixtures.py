"""What registry and fine-tune tests share: a registry on a real model store, and a user whose
examples have a style a small model picks up in a few steps."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters.registry import AdapterRegistry
from adapters.validation import ValidationLimits
from models.catalog import register_prepared_models
from models.store import load_prepared
from serving.settings import load_settings
from storage import migrate
from storage.blobs import DirectoryBlobStore
from storage.cache import open_cache
from storage.database import Database
from storage.repositories import ExampleRepository, UserRepository
from tests.server import prepared_model_store

MODEL = "smollm2-135m-instruct"

TOPICS = [
    "the sea", "bread", "rain", "a compass", "the moon", "rope", "a map", "parrots",
    "gold", "storms", "islands", "a lantern", "the wind", "cannons", "anchors", "fish",
    "stars", "a barrel", "ships", "sails", "a treasure chest", "the tide", "a harbour",
    "coconuts", "a spyglass", "thunder", "a hammock", "the deck", "a flag", "rum cake",
    "seagulls", "a plank", "the crew", "a whale", "shells", "a lighthouse",
]  # fmt: skip


def pirate_conversations(count: int) -> list[list[dict[str, Any]]]:
    """Questions answered in one fixed, odd voice: easy to learn, easy to measure."""
    return [
        [
            {"role": "user", "content": f"Tell me about {topic}."},
            {
                "role": "assistant",
                "content": f"Arr, matey! {topic.capitalize()} be a fine thing on the seven "
                "seas, says Captain Flint. Yo ho ho!",
            },
        ]
        for topic in (TOPICS * (count // len(TOPICS) + 1))[:count]
    ]


def add_examples(
    database: Database, user_id: str, conversations: list[list[dict[str, Any]]]
) -> None:
    with database.session() as session:
        ExampleRepository(session).add_many(user_id=user_id, examples=conversations)


def add_user(database: Database, name: str) -> str:
    with database.session() as session:
        return UserRepository(session).create(name=name).id


@contextmanager
def registry_on(
    database_url: str, tmp_path: Path, redis_url: str | None = None
) -> Iterator[AdapterRegistry]:
    store = prepared_model_store()
    settings = load_settings(
        storage={"data_dir": tmp_path, "model_store": store, "database_url": database_url}
    )
    database = Database(database_url)
    migrate.upgrade(database)
    with database.session() as session:
        register_prepared_models(
            session,
            load_prepared(store),
            store_dir=settings.storage.model_store_dir,
            prices=settings.router.prices,
        )
    cache = open_cache(redis_url, prefix=f"tailor-test-{secrets.token_hex(4)}:")
    try:
        yield AdapterRegistry(
            database=database,
            blobs=DirectoryBlobStore(tmp_path / "blobs"),
            cache=cache,
            model_store_dir=store,
            limits=ValidationLimits(max_rank=16),
        )
    finally:
        cache.close()
        database.dispose()

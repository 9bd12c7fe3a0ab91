"""The long-lived objects one server process holds, opened at start-up.

Everything here is built by ``Services.open(settings)`` when the service
starts, never at import, and closed when it stops.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.registry import AdapterRegistry
from adapters.validation import ValidationLimits
from serving.settings import Settings
from storage import migrate
from storage.blobs import DirectoryBlobStore
from storage.cache import Cache, open_cache
from storage.database import Database


@dataclass
class Services:
    settings: Settings
    database: Database
    cache: Cache
    blobs: DirectoryBlobStore
    adapters: AdapterRegistry

    @classmethod
    def open(cls, settings: Settings, *, migrate_schema: bool | None = None) -> Services:
        """Connect to the configured backends and check that they answer.

        Raises ``ConfigurationError`` or ``BackendUnavailable`` (naming the
        setting to fix) before anything is served.
        """
        database = Database(settings.storage.resolved_database_url)
        cache = open_cache(settings.storage.redis_url, prefix=settings.storage.cache_prefix)
        try:
            database.ping()
            cache.ping()
            if settings.storage.migrate_on_start if migrate_schema is None else migrate_schema:
                migrate.upgrade(database)
        except BaseException:
            database.dispose()
            cache.close()
            raise
        blobs = DirectoryBlobStore(settings.storage.blob_dir)
        return cls(
            settings=settings,
            database=database,
            cache=cache,
            blobs=blobs,
            adapters=AdapterRegistry(
                database=database,
                blobs=blobs,
                cache=cache,
                model_store_dir=settings.storage.model_store_dir,
                # Refuse at upload what the replicas' slot pools cannot serve.
                limits=ValidationLimits(max_rank=settings.engine.max_adapter_rank),
            ),
        )

    def close(self) -> None:
        self.cache.close()
        self.database.dispose()

"""Tailor's storage layer: where all of the service's truth lives.

- ``storage.settings``: the one settings object (``load_settings()``).
- ``storage.database`` / ``storage.migrate``: SQLite or PostgreSQL, Alembic schema.
- ``storage.tables``: the ORM tables; ``storage.repositories``: typed access to them.
- ``storage.cache``: Redis or in-process cache (bytes with TTL, token buckets, pub/sub).
- ``storage.blobs``: content-addressed adapter weights, verified on every read.
- ``storage.errors``: the one exception tree of this package.

The base models as files (the model store, conversion, the device choice, chat
formatting, the safetensors header reader) are the ``models`` layer above this
one, not storage.

Nothing here opens a connection or loads a model at import.
"""

from storage.database import Database
from storage.errors import (
    BackendUnavailable,
    BlobCorrupted,
    BlobError,
    BlobNotFound,
    ConfigurationError,
    Conflict,
    NotFound,
    StorageError,
)
from storage.settings import Settings, load_settings

__all__ = [
    "BackendUnavailable",
    "BlobCorrupted",
    "BlobError",
    "BlobNotFound",
    "ConfigurationError",
    "Conflict",
    "Database",
    "NotFound",
    "Settings",
    "StorageError",
    "load_settings",
]

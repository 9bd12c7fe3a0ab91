"""Tailor's storage layer: where all of the service's truth lives.

- ``storage.database`` / ``storage.migrate``: SQLite or PostgreSQL, Alembic schema.
- ``storage.tables``: the ORM tables; ``storage.repositories``: typed access to them.
- ``storage.cache``: Redis or in-process cache (bytes with TTL, token buckets, pub/sub).
- ``storage.blobs``: content-addressed adapter weights, verified on every read.
- ``storage.errors``: the one exception tree of this package.

The base models as files (the model store, conversion, the device choice, chat
formatting, the safetensors header reader) are the ``models`` layer above this
one, not storage; the settings are the application's (``serving/settings.py``),
and this package takes what it needs of them as plain values (a database URL, a
cache URL and prefix, a blob directory).

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

__all__ = [
    "BackendUnavailable",
    "BlobCorrupted",
    "BlobError",
    "BlobNotFound",
    "ConfigurationError",
    "Conflict",
    "Database",
    "NotFound",
    "StorageError",
]

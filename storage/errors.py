"""The exceptions of the storage layer.

Every error that ``storage`` raises on purpose is a ``StorageError``. Callers
catch the specific subclasses; ``serving`` maps them to HTTP statuses (nothing
below ``serving`` knows about HTTP).

    StorageError
    ├── ConfigurationError     a setting is malformed or names something unsupported
    ├── BackendUnavailable     a configured database or cache cannot be reached
    ├── NotFound               the object does not exist (or is not the caller's)
    ├── Conflict               the change clashes with the current state
    ├── InvalidInput           well-formed input that cannot be stored as asked
    ├── BlobError
    │   ├── BlobNotFound       no blob with that sha256
    │   └── BlobCorrupted      the stored bytes no longer hash to their name
    └── ModelStoreError        (``models.errors``) a packaged model cannot be prepared,
                               or a prepared one is unusable
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised on purpose by ``storage``."""


class ConfigurationError(StorageError):
    """A setting is malformed or names something Tailor does not support.

    ``setting`` is the environment variable to fix (e.g. ``TAILOR_DATABASE_URL``).
    """

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class BackendUnavailable(StorageError):
    """A configured backing service (database, cache) cannot be reached."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class NotFound(StorageError):
    """The object does not exist, or belongs to someone else."""


class Conflict(StorageError):
    """The change clashes with the current state (a duplicate, a lost race)."""


class InvalidInput(StorageError):
    """Well-formed input that cannot be stored as asked (API: 422)."""


class BlobError(StorageError):
    """Base class of blob store errors."""


class BlobNotFound(BlobError, NotFound):
    """No blob is stored under that sha256."""


class BlobCorrupted(BlobError):
    """A stored blob's bytes do not hash to its name; it must not be used."""

"""The exceptions of the model layer.

    StorageError (storage.errors)
    └── ModelStoreError    a packaged model cannot be prepared, or a prepared one is unusable

``ModelStoreError`` is raised on purpose by ``models.store`` (preparing, listing,
loading the embedder) and by the router's query encoder (``router.query_embedder``, a
store without its encoder). It is a ``StorageError``: the model store is durable state
on disk like the blob store, and the callers that handle storage failures handle it
alike. The CLI prints it as one line with exit code 2 (``serving.cli`` catches
``StorageError``). A running server reads the store while its models load, where an
error becomes ``ModelRuntime.load_error``: completions answer 503 ``not_ready`` and
``/readyz`` names the reason. Nothing below ``serving`` knows about HTTP, and
``serving/errors.py`` gives it no status of its own.
"""

from __future__ import annotations

from storage.errors import StorageError


class ModelStoreError(StorageError):
    """A packaged model cannot be prepared, or the model store holds an unusable entry."""

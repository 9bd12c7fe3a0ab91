"""The exceptions of the model layer.

    StorageError (storage.errors)
    └── ModelStoreError          a packaged model cannot be prepared, or a prepared one is unusable
        ├── ModelRefused         (also InvalidInput) files offered to ``tailor models add`` that
        │                        are no model Tailor can serve: pickled weights, no config, an
        │                        unsupported architecture, an unloadable checkpoint, bad options
        ├── InvalidModelName     (also InvalidInput) a name that cannot be a model id
        ├── ModelNameTaken       (also Conflict) the name is already a model's
        └── ModelRemovalRefused  (also Conflict) a packaged model, or one with adapters or jobs

``ModelStoreError`` is raised on purpose by ``models.store`` (preparing, adding, listing,
loading the embedder), by ``models.catalog`` (registering, removing) and by the router's
query encoder (``router.query_embedder``, a store without its encoder). It is a
``StorageError``: the model store is durable state on disk like the blob store, and the
callers that handle storage failures handle it alike. The CLI prints it as one line with
exit code 2 (``serving.cli`` catches ``StorageError``). A running server reads the store
while its models load, where an error becomes ``ModelRuntime.load_error``: completions
answer 503 ``not_ready`` and ``/readyz`` names the reason. Nothing below ``serving`` knows
about HTTP: the subclasses for bad input also derive from storage's ``InvalidInput`` (422)
and ``Conflict`` (409), which ``serving/errors.py`` maps already.
"""

from __future__ import annotations

from storage.errors import Conflict, InvalidInput, StorageError


class ModelStoreError(StorageError):
    """A packaged model cannot be prepared, or the model store holds an unusable entry."""


class ModelRefused(ModelStoreError, InvalidInput):
    """The files offered as a base model are not one Tailor can serve; nothing was stored."""


class InvalidModelName(ModelStoreError, InvalidInput):
    """The name asked for cannot be a model id; nothing was stored."""


class ModelNameTaken(ModelStoreError, Conflict):
    """A model of that name is already in the store or registered; nothing was stored."""


class ModelRemovalRefused(ModelStoreError, Conflict):
    """The model cannot be removed as asked; nothing was removed."""

"""Everything about LoRA experts below the API, in two halves.

The catalog (may use ``storage``: SQL rows, blobs, the cache):

- ``adapters.registry``: experts and versions in SQL, weights in the blob
  store, hot copies in the cache; atomic promotion, rollback, retirement; the
  query that resolves a request's expert set.
- ``adapters.validation`` / ``adapters.file_format`` / ``adapters.peft_interop``:
  nothing loads before it is checked; safetensors only; PEFT in and out.
- ``adapters.invalidation``: a replica's listener for the registry's events.

The device side, ``adapters.device`` (imports no SQL; see its docstring):

- ``adapters.device.multi_lora``: many experts per batch from a fixed slot pool,
  and the CoMiGS gate that mixes a user's generalists and specialist per token.
- ``adapters.device.slot_cache``: what one model replica keeps loaded.

What both halves share is SQL-free and lives here: ``adapters.lora_weights``,
``adapters.base_shapes``, ``adapters.expert_sets`` (the expert set of a request
and a replica's cache of them), ``adapters.invalidation_event`` and
``adapters.errors``, the one exception tree of this package.

Nothing here loads a model or opens a connection at import. The package root
exports only SQL-free names, because every import of ``adapters.device`` runs
it first; the catalog's pieces are imported from their modules
(``from adapters.registry import AdapterRegistry``).
"""

from adapters.errors import (
    AdapterError,
    AdapterNotFound,
    InvalidAdapter,
    InvalidTransition,
    SlotsExhausted,
)
from adapters.lora_weights import TARGET_MODULES, LoraWeights

__all__ = [
    "TARGET_MODULES",
    "AdapterError",
    "AdapterNotFound",
    "InvalidAdapter",
    "InvalidTransition",
    "LoraWeights",
    "SlotsExhausted",
]

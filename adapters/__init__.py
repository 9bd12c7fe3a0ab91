"""Everything about LoRA experts below the API.

- ``adapters.registry``: experts and versions in SQL, weights in the blob
  store, hot copies in the cache; atomic promotion, rollback, retirement.
- ``adapters.validation`` / ``adapters.file_format`` / ``adapters.peft_interop``:
  nothing loads before it is checked; safetensors only; PEFT in and out.
- ``adapters.multi_lora``: many experts per batch from a fixed slot pool, and
  the CoMiGS gate that mixes a user's generalists and specialist per token.
- ``adapters.slot_cache`` / ``adapters.expert_sets`` / ``adapters.invalidation``:
  what one model replica keeps loaded, and how it learns of promotions.
- ``adapters.errors``: the one exception tree of this package.

Nothing here loads a model or opens a connection at import. The package
root exports only what needs no database driver, so that the serving math
(``adapters.multi_lora``) imports on a bare GPU host; the SQL-backed pieces
are imported from their modules (``from adapters.registry import AdapterRegistry``).
"""

from adapters.errors import (
    AdapterError,
    AdapterNotFound,
    InvalidAdapter,
    InvalidTransition,
    SlotsExhausted,
)
from adapters.lora_weights import TARGET_MODULES, LoraWeights
from adapters.validation import BaseModelSpec, ValidationLimits

__all__ = [
    "TARGET_MODULES",
    "AdapterError",
    "AdapterNotFound",
    "BaseModelSpec",
    "InvalidAdapter",
    "InvalidTransition",
    "LoraWeights",
    "SlotsExhausted",
    "ValidationLimits",
]

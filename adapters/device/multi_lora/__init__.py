"""Many LoRA experts in one batch (Punica/S-LoRA-style slot pool) and the CoMiGS mixture.

``MultiLoraModel.wrap`` replaces a decoder's target linears with
``MultiLoraLinear`` layers that read a preallocated ``AdapterPool``; each
batch row names its experts by slot, and a specialist's gate mixes them per
token (see ``model`` for an example).
"""

from adapters.device.multi_lora.layer import MultiLoraLinear, Route
from adapters.device.multi_lora.model import MultiLoraConfig, MultiLoraModel, SlotIndices
from adapters.device.multi_lora.pool import AdapterPool, SlotInfo

__all__ = [
    "AdapterPool",
    "MultiLoraConfig",
    "MultiLoraLinear",
    "MultiLoraModel",
    "Route",
    "SlotIndices",
    "SlotInfo",
]

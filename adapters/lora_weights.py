"""One LoRA expert's weights in memory, named the way peft names them.

Tensor names follow peft's saved-adapter convention, without the adapter
name, e.g. ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight``
(shape ``[rank, in_features]``) and ``...lora_B.weight`` (``[out_features,
rank]``). Using peft's names as Tailor's own means a PEFT adapter directory
imports and exports without renaming anything.

A specialist may also carry its CoMiGS gate: one ``...<module>.tailor_gate.weight``
tensor of shape ``[n_experts, in_features]`` per wrapped module, whose rows
score, in order, the generalists listed in ``gate_experts`` and then the
specialist itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

# The linear layers of llama- and gemma-style decoders that LoRA may wrap.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

TENSOR_NAME = re.compile(
    r"^base_model\.model\.model\.layers\.(?P<layer>\d+)\."
    r"(?P<block>self_attn|mlp)\.(?P<module>[a-z_]+)\."
    r"(?P<kind>lora_A|lora_B|tailor_gate)\.weight$"
)


def tensor_name(layer: int, module: str, kind: str) -> str:
    block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.{kind}.weight"


@dataclass(frozen=True)
class LoraWeights:
    """A validated LoRA expert (and, for a specialist, optionally its gate)."""

    base_model_id: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    tensors: dict[str, torch.Tensor] = field(repr=False)
    # Adapter ids of the generalists the gate scores, in row order; the last
    # gate row is this expert itself. Empty when there is no gate.
    gate_experts: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def has_gate(self) -> bool:
        return any(name.endswith(".tailor_gate.weight") for name in self.tensors)

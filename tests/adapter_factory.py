"""Random LoRA experts of the right shapes for a real base model, for tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from adapters.base_shapes import BaseModelShapes
from adapters.lora_weights import LoraWeights, tensor_name


def random_lora(
    shapes: BaseModelShapes,
    *,
    base_model_id: str,
    rank: int = 4,
    alpha: float = 8.0,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    gate_experts: Sequence[str] = (),
    seed: int = 0,
    scale: float = 0.02,
) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(shapes.num_layers):
        for module in target_modules:
            shape = shapes.modules[module]
            tensors[tensor_name(layer, module, "lora_A")] = (
                torch.randn(rank, shape.in_features, generator=generator) * scale
            )
            tensors[tensor_name(layer, module, "lora_B")] = (
                torch.randn(shape.out_features, rank, generator=generator) * scale
            )
            if gate_experts:
                tensors[tensor_name(layer, module, "tailor_gate")] = torch.randn(
                    len(gate_experts) + 1, shape.in_features, generator=generator
                )
    return LoraWeights(
        base_model_id=base_model_id,
        rank=rank,
        alpha=alpha,
        target_modules=tuple(target_modules),
        tensors=tensors,
        gate_experts=tuple(gate_experts),
    )

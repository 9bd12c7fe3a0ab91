"""LoRA experts on a training model: peft's LoRA layers, plus the CoMiGS gate.

peft creates and holds every expert: the one being trained (adapter name
``trained``) and the frozen generalists it is mixed with (``generalist_0`` ...).
peft sums the active adapters of a layer; CoMiGS weighs them per token by a
learnt gate, which peft has no notion of. So each peft LoRA layer is wrapped in
``GatedExperts``, which computes exactly what serving's ``MultiLoraLinear``
computes:

    y = base(x) + sum_e w_e(x) * scale_e * B_e(A_e(x)),   w = top-k softmax(G x)

without a gate (a lone expert, or experts plainly summed) ``w = 1``; with one,
``w`` is serving's own function (``adapters.device.multi_lora.gate.gate_weights``). Trained
weights leave as ``LoraWeights`` under peft's saved tensor names, so the
registry stores, and serving loads, exactly what was trained.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapters.device.multi_lora.gate import gate_weights
from adapters.lora_weights import LoraWeights, tensor_name
from finetune.config import TrainingConfig

TRAINED = "trained"
_LAYER_PATH = re.compile(r"layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<module>\w+)$")


class GatedExperts(nn.Module):
    """One peft LoRA layer whose experts are mixed per token by a gate (or summed)."""

    def __init__(
        self, lora_layer: Any, experts: Sequence[str], gate: nn.Parameter | None, top_k: int
    ) -> None:
        super().__init__()
        self.lora_layer = lora_layer
        self.experts = tuple(experts)
        self.gate = gate
        self.top_k = top_k

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        layer: Any = self.lora_layer
        y: torch.Tensor = layer.base_layer(x, *args, **kwargs)
        lora_a: Any = layer.lora_A
        lora_b: Any = layer.lora_B
        present = [name for name in self.experts if name in lora_a]
        if not present:
            return y
        xa = x.to(lora_a[present[0]].weight.dtype)
        weights = None if self.gate is None else gate_weights(xa @ self.gate.t(), self.top_k)
        delta: torch.Tensor | None = None
        for position, name in enumerate(self.experts):
            # An expert without weights in this module adds zero, but keeps
            # its share of the gate, as in serving's pool.
            if name not in lora_a:
                continue
            term = lora_b[name](lora_a[name](xa)) * layer.scaling[name]
            if weights is not None:
                term = term * weights[..., position : position + 1].to(term.dtype)
            delta = term if delta is None else delta + term
        assert delta is not None
        return y + delta.to(y.dtype)


@dataclass
class AttachedExperts:
    """The experts on a model, and what the training loop steps."""

    model: nn.Module  # the peft model
    config: TrainingConfig
    base_model_id: str
    generalist_ids: tuple[str, ...]
    layers: dict[tuple[int, str], GatedExperts]

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self._trained_named()]

    def gate_parameters(self) -> list[nn.Parameter]:
        return [layer.gate for layer in self.layers.values() if layer.gate is not None]

    @property
    def has_gate(self) -> bool:
        return bool(self.generalist_ids)

    def _trained_named(self) -> Iterator[tuple[str, nn.Parameter]]:
        for layer in self.layers.values():
            lora = layer.lora_layer
            if TRAINED in lora.lora_A:
                yield "A", lora.lora_A[TRAINED].weight
                yield "B", lora.lora_B[TRAINED].weight

    def export(self) -> LoraWeights:
        """The trained expert (and its gate) under the names the registry stores."""
        tensors: dict[str, torch.Tensor] = {}
        for (layer_index, module), layer in self.layers.items():
            lora = layer.lora_layer
            if TRAINED not in lora.lora_A:
                continue
            a = lora.lora_A[TRAINED].weight.detach().float().cpu().contiguous()
            b = lora.lora_B[TRAINED].weight.detach().float().cpu().contiguous()
            tensors[tensor_name(layer_index, module, "lora_A")] = a
            tensors[tensor_name(layer_index, module, "lora_B")] = b
            if layer.gate is not None:
                gate = layer.gate.detach().float().cpu().contiguous()
                tensors[tensor_name(layer_index, module, "tailor_gate")] = gate
        return LoraWeights(
            base_model_id=self.base_model_id,
            rank=self.config.rank,
            alpha=self.config.alpha,
            target_modules=self.config.target_modules,
            tensors=tensors,
            gate_experts=self.generalist_ids,
        )


def attach_experts(
    model: nn.Module,
    config: TrainingConfig,
    *,
    base_model_id: str,
    generalists: Sequence[tuple[str, LoraWeights]] = (),
) -> AttachedExperts:
    """Add a new trainable expert (and, beside frozen generalists, a gate) to ``model``.

    ``generalists`` are (adapter id, weights) in the order serving resolves
    them; the gate's rows score them in that order, then the trained expert.
    Only the new expert and the gate are trainable.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    trained_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft takes floats too
        target_modules=list(config.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, trained_config, adapter_name=TRAINED)
    names: list[str] = []
    for index, (_, weights) in enumerate(generalists):
        name = f"generalist_{index}"
        peft_model.add_adapter(
            name,
            LoraConfig(
                r=weights.rank,
                lora_alpha=weights.alpha,  # type: ignore[arg-type]
                target_modules=list(weights.target_modules),
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )
        result: Any = set_peft_model_state_dict(peft_model, weights.tensors, adapter_name=name)
        if result.unexpected_keys:
            raise ValueError(
                f"generalist {generalists[index][0]} has tensors this model lacks: "
                f"{sorted(result.unexpected_keys)[:3]}"
            )
        names.append(name)
    names.append(TRAINED)

    for parameter in peft_model.parameters():
        parameter.requires_grad_(False)
    layers: dict[tuple[int, str], GatedExperts] = {}
    wrap: list[tuple[str, Any]] = [
        (path, module)
        for path, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    ]
    for path, module in wrap:
        match = _LAYER_PATH.search(path)
        if match is None:
            raise ValueError(f"{path}: a LoRA layer outside the decoder's layers")
        gate = None
        if generalists:
            in_features = module.lora_A[next(iter(module.lora_A))].in_features
            device = module.lora_A[next(iter(module.lora_A))].weight.device
            # Zero logits: the gate starts as an even mix of its experts.
            gate = nn.Parameter(torch.zeros(len(names), in_features, device=device))
        gated = GatedExperts(module, names, gate, config.top_k)
        parent_path, _, attribute = path.rpartition(".")
        setattr(peft_model.get_submodule(parent_path), attribute, gated)
        layers[(int(match["layer"]), match["module"])] = gated
    attached = AttachedExperts(
        model=peft_model,
        config=config,
        base_model_id=base_model_id,
        generalist_ids=tuple(adapter_id for adapter_id, _ in generalists),
        layers=layers,
    )
    for parameter in attached.expert_parameters():
        parameter.requires_grad_(True)
    return attached

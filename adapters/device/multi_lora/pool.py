"""The preallocated slot pool that holds every loaded LoRA expert of one model.

Each wrapped linear owns a share of the pool, sized once for the largest
adapter the pool accepts:

    lora_A    [num_slots, max_rank, in_features]
    lora_B    [num_slots, max_rank, out_features]   (scaled, transposed: see below)
    gate      [num_slots, max_experts, in_features]
    has_gate  [num_slots]                           (bool)

A slot holds one expert. Slot 0 is reserved and stays all-zero, so that an
index of 0 means "no adapter" and costs nothing to special-case. Loading
copies into these tensors in place and never reallocates: their addresses
stay fixed for the pool's life, which CUDA graph capture needs.

Two choices differ from peft's layout, both to make the forward cheaper:

- ``lora_B`` is stored transposed (``[rank, out]`` per slot), so that
  gathering the slots of a batch and flattening experts x rank into one
  dimension is a view, not a copy.
- The scale ``alpha / rank`` is folded into ``lora_B`` at load time, so the
  forward never gathers or multiplies a per-slot scale. The rounding this
  adds is one multiply per weight, once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from adapters.errors import InvalidAdapter
from adapters.lora_weights import TENSOR_NAME, LoraWeights, tensor_name

# (decoder layer index, module name such as "q_proj").
ModuleKey = tuple[int, str]


def module_label(key: ModuleKey) -> str:
    """How error messages name a wrapped module: ``layers.3.q_proj``."""
    layer, module = key
    return f"layers.{layer}.{module}"


@dataclass(frozen=True)
class SlotInfo:
    """What the host remembers about a loaded slot (the tensors live on the device)."""

    rank: int
    scale: float
    # How many experts the slot's gate scores (its generalists, then itself);
    # 0 when the slot carries no gate.
    gate_experts: int
    modules: frozenset[ModuleKey]


class ModulePool:
    """One wrapped linear's share of the pool."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_slots: int,
        max_rank: int,
        max_experts: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.lora_A = torch.zeros(num_slots, max_rank, in_features, device=device, dtype=dtype)
        self.lora_B = torch.zeros(num_slots, max_rank, out_features, device=device, dtype=dtype)
        self.gate = torch.zeros(num_slots, max_experts, in_features, device=device, dtype=dtype)
        self.has_gate = torch.zeros(num_slots, device=device, dtype=torch.bool)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.lora_A, self.lora_B, self.gate, self.has_gate)

    def zero_slot(self, slot: int) -> None:
        for tensor in self.tensors():
            tensor[slot].zero_()


@dataclass(frozen=True)
class _ModuleTensors:
    """One module's validated tensors of an adapter; each part may be absent."""

    lora_A: torch.Tensor | None
    lora_B: torch.Tensor | None
    gate: torch.Tensor | None


class AdapterPool:
    """Every wrapped module's pool share, and which slots hold what."""

    def __init__(
        self,
        module_shapes: Mapping[ModuleKey, tuple[int, int]],
        *,
        num_slots: int,
        max_rank: int,
        max_experts: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.max_experts = max_experts
        self.device = device
        self.dtype = dtype
        self.modules: dict[ModuleKey, ModulePool] = {
            key: ModulePool(
                in_features,
                out_features,
                num_slots=num_slots,
                max_rank=max_rank,
                max_experts=max_experts,
                device=device,
                dtype=dtype,
            )
            for key, (in_features, out_features) in module_shapes.items()
        }
        self._slots: dict[int, SlotInfo] = {}

    @property
    def memory_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors())

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every pool tensor (their addresses never change)."""
        for module in self.modules.values():
            yield from module.tensors()

    def info(self, slot: int) -> SlotInfo | None:
        """What ``slot`` holds, or None when it is empty."""
        self._check_slot(slot, allow_reserved=True)
        return self._slots.get(slot)

    def load(self, slot: int, weights: LoraWeights) -> SlotInfo:
        """Copy ``weights`` into ``slot``, replacing whatever it held.

        Everything is validated before the first write, so a rejected adapter
        leaves the slot as it was.
        """
        self._check_slot(slot, allow_reserved=False)
        parsed = self._validate(weights)
        scale = weights.scale
        for module in self.modules.values():
            module.zero_slot(slot)
        for key, tensors in parsed.items():
            module = self.modules[key]
            if tensors.lora_A is not None and tensors.lora_B is not None:
                rank = tensors.lora_A.shape[0]
                module.lora_A[slot, :rank].copy_(tensors.lora_A)
                # Scaled in float32 before the cast so that a bf16 pool rounds once.
                module.lora_B[slot, :rank].copy_(tensors.lora_B.t().float() * scale)
            if tensors.gate is not None:
                module.gate[slot, : tensors.gate.shape[0]].copy_(tensors.gate)
                module.has_gate[slot] = True
        info = SlotInfo(
            rank=weights.rank,
            scale=scale,
            gate_experts=len(weights.gate_experts) + 1 if weights.has_gate else 0,
            modules=frozenset(parsed),
        )
        self._slots[slot] = info
        return info

    def clear(self, slot: int) -> None:
        """Empty ``slot``: it then adds nothing to any row routed to it."""
        self._check_slot(slot, allow_reserved=False)
        for module in self.modules.values():
            module.zero_slot(slot)
        self._slots.pop(slot, None)

    def _check_slot(self, slot: int, *, allow_reserved: bool) -> None:
        # A slot number comes from the engine, not from the adapter's owner:
        # a bad one is a programming error (ValueError), not an InvalidAdapter.
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise ValueError(f"a slot is an int, got {type(slot).__name__}")
        if slot == 0 and not allow_reserved:
            raise ValueError("slot 0 is reserved for 'no adapter' and cannot be loaded or cleared")
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is out of range: the pool has 0..{self.num_slots - 1}")

    def _validate(self, weights: LoraWeights) -> dict[ModuleKey, _ModuleTensors]:
        if not 1 <= weights.rank <= self.max_rank:
            raise InvalidAdapter(
                f"rank {weights.rank} is outside what this pool holds (1..{self.max_rank})"
            )
        if not (math.isfinite(weights.scale) and weights.scale != 0):
            raise InvalidAdapter(f"alpha {weights.alpha} gives an unusable scale {weights.scale}")
        gate_experts = len(weights.gate_experts) + 1
        if weights.has_gate and gate_experts > self.max_experts:
            raise InvalidAdapter(
                f"the gate mixes {gate_experts} experts ({len(weights.gate_experts)} generalists "
                f"and the specialist); this pool mixes at most {self.max_experts}"
            )
        if weights.gate_experts and not weights.has_gate:
            raise InvalidAdapter("gate_experts are listed but there are no tailor_gate tensors")

        found: dict[ModuleKey, dict[str, torch.Tensor]] = {}
        for name, tensor in weights.tensors.items():
            match = TENSOR_NAME.match(name)
            # Rebuilding the canonical name also catches e.g. q_proj under mlp.
            if (
                match is None
                or tensor_name(int(match["layer"]), match["module"], match["kind"]) != name
            ):
                raise InvalidAdapter(f"tensor {name!r} is not a LoRA tensor Tailor can serve")
            key = (int(match["layer"]), match["module"])
            if key not in self.modules:
                raise InvalidAdapter(
                    f"tensor {name!r} targets {module_label(key)}, which this model "
                    "does not have or the pool does not wrap"
                )
            found.setdefault(key, {})[match["kind"]] = tensor

        parsed = {key: self._check_module(key, kinds, weights) for key, kinds in found.items()}
        if not any(tensors.lora_A is not None for tensors in parsed.values()):
            raise InvalidAdapter("the adapter has no lora_A/lora_B tensors")
        return parsed

    def _check_module(
        self, key: ModuleKey, kinds: dict[str, torch.Tensor], weights: LoraWeights
    ) -> _ModuleTensors:
        module = self.modules[key]
        label = module_label(key)
        lora_A, lora_B, gate = kinds.get("lora_A"), kinds.get("lora_B"), kinds.get("tailor_gate")
        if (lora_A is None) != (lora_B is None):
            present, missing = ("lora_A", "lora_B") if lora_B is None else ("lora_B", "lora_A")
            raise InvalidAdapter(f"{label} has {present} but no {missing}")
        expected = {
            "lora_A": (weights.rank, module.in_features),
            "lora_B": (module.out_features, weights.rank),
            "tailor_gate": (len(weights.gate_experts) + 1, module.in_features),
        }
        for kind, tensor in kinds.items():
            if tuple(tensor.shape) != expected[kind]:
                shape, wanted = list(tensor.shape), list(expected[kind])
                raise InvalidAdapter(f"{label}.{kind} has shape {shape}, expected {wanted}")
            if not tensor.is_floating_point():
                raise InvalidAdapter(f"{label}.{kind} has dtype {tensor.dtype}, not floating point")
            if not bool(torch.isfinite(tensor).all()):
                raise InvalidAdapter(f"{label}.{kind} has non-finite values")
        return _ModuleTensors(lora_A, lora_B, gate)

"""Wrap a decoder so that one batch serves many users' LoRA experts at once.

    handle = MultiLoraModel.wrap(model, num_slots=65, max_rank=16)
    handle.load(1, generalist)          # one slot per expert
    handle.load(2, alice_specialist)    # carries her gate over [generalist, herself]
    handle.load(3, bob_adapter)
    with handle.routing([[1, 2], [3, 0], [0, 0]], gate_slots=[2, 0, 0]):
        logits = model(input_ids).logits   # row 0: Alice's mixture, 1: Bob, 2: base

The wrapping happens in place: ``model`` itself now reads the routing; outside
``routing(...)`` it computes the base model's output. The pool is allocated
once, on the device and in the dtype of the base model's layers, so move and
cast the model before wrapping it, never after.

``kernels`` picks how the layers compute: "torch" (gathers and batched
matmuls; any device), "triton" (fused kernels that read the pool in place;
CUDA) or "auto", the default: Triton where the pool is on CUDA and Triton
imports, else torch. Both compute the same sum; see ``layer`` and
``triton_kernels``.

Not thread-safe: load and clear slots between forwards, not during one.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from adapters.device.multi_lora.layer import LayerKernels, MultiLoraLinear, Route, Routing
from adapters.device.multi_lora.pool import AdapterPool, ModuleKey, SlotInfo
from adapters.lora_weights import TARGET_MODULES, LoraWeights

# Matches the wrapped linears of llama- and gemma-style decoders wherever the
# decoder sits in the module tree (``model.layers.3.self_attn.q_proj``).
_MODULE_PATH = re.compile(r"(?:^|\.)layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<module>\w+)$")

# Slot indices as the engine may hold them: a tensor, or plain lists.
SlotIndices = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]

# How the wrapped layers compute; "auto" resolves to one of the other two at wrap time.
Kernels = Literal["auto", "torch", "triton"]


@dataclass(frozen=True)
class MultiLoraConfig:
    """The fixed sizes of a pool; validated on creation."""

    # Slot 0 is reserved for "no adapter", so num_slots - 1 adapters fit.
    num_slots: int
    max_rank: int
    # The most experts one row may mix (and so the most rows of any gate).
    max_experts: int = 4
    # Experts kept per token by a gate (CoMiGS uses 2).
    top_k: int = 2
    target_modules: tuple[str, ...] = TARGET_MODULES
    # "auto": the Triton kernels where the pool is on CUDA and Triton imports,
    # else the torch path (see the module docstring).
    kernels: Kernels = "auto"

    def __post_init__(self) -> None:
        # Accept any sequence but keep the frozen config hashable.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name in ("num_slots", "max_rank", "max_experts", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.num_slots < 2:
            raise ValueError(
                f"num_slots must be at least 2 (slot 0 is reserved), got {self.num_slots}"
            )
        if self.max_rank < 1:
            raise ValueError(f"max_rank must be at least 1, got {self.max_rank}")
        if self.max_experts < 1:
            raise ValueError(f"max_experts must be at least 1, got {self.max_experts}")
        if not 1 <= self.top_k <= self.max_experts:
            raise ValueError(
                f"top_k must be between 1 and max_experts ({self.max_experts}), got {self.top_k}"
            )
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        unknown = sorted(set(self.target_modules) - set(TARGET_MODULES))
        if unknown:
            raise ValueError(
                f"unknown target modules {unknown}; known: {', '.join(TARGET_MODULES)}"
            )
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules lists a module twice: {list(self.target_modules)}")
        choices = get_args(Kernels)
        if not isinstance(self.kernels, str) or self.kernels not in choices:
            raise ValueError(
                f"kernels must be one of {', '.join(map(repr, choices))}, got {self.kernels!r}"
            )
        # Only looked up, not imported: Triton is imported by a pool that runs
        # it, never by a config or a torch pool.
        if self.kernels == "triton" and importlib.util.find_spec("triton") is None:
            raise ValueError(
                "kernels='triton' needs the triton package, which is not installed "
                "(CUDA builds of torch bring it); use kernels='auto' or 'torch'"
            )


class MultiLoraModel:
    """A handle on a model whose target linears read a shared slot pool."""

    def __init__(
        self,
        model: nn.Module,
        config: MultiLoraConfig,
        pool: AdapterPool,
        routing: Routing,
        kernels: LayerKernels = "torch",
    ) -> None:
        # Use ``wrap``; this only assembles the parts.
        self._model = model
        self._config = config
        self._pool = pool
        self._routing = routing
        self._kernels: LayerKernels = kernels

    @classmethod
    def wrap(
        cls,
        model: nn.Module,
        *,
        num_slots: int,
        max_rank: int,
        max_experts: int = 4,
        top_k: int = 2,
        target_modules: Sequence[str] = TARGET_MODULES,
        kernels: Kernels = "auto",
    ) -> MultiLoraModel:
        """Replace ``model``'s target linears in place and allocate the pool."""
        config = MultiLoraConfig(
            num_slots=num_slots,
            max_rank=max_rank,
            max_experts=max_experts,
            top_k=top_k,
            target_modules=tuple(target_modules),
            kernels=kernels,
        )
        targets = _find_targets(model, config.target_modules)
        weights = [linear.weight for _, linear in targets.values()]
        devices = {weight.device for weight in weights}
        if len(devices) != 1:
            raise ValueError(
                f"the target layers lie on several devices ({sorted(map(str, devices))}); "
                "a pool serves one device"
            )
        device = devices.pop()
        # Resolved before anything is allocated or replaced: a refusal leaves
        # the model as it was.
        layer_kernels = _layer_kernels(config.kernels, device)
        shapes = {key: (lin.in_features, lin.out_features) for key, (_, lin) in targets.items()}
        pool = AdapterPool(
            shapes,
            num_slots=config.num_slots,
            max_rank=config.max_rank,
            max_experts=config.max_experts,
            device=device,
            dtype=_adapter_dtype(model, weights),
        )
        routing = Routing()
        for key, (path, linear) in targets.items():
            parent_path, _, attribute = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            wrapped = MultiLoraLinear(
                linear, pool.modules[key], routing, config.top_k, key, layer_kernels
            )
            setattr(parent, attribute, wrapped)
        return cls(model, config, pool, routing, layer_kernels)

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def config(self) -> MultiLoraConfig:
        return self._config

    @property
    def pool(self) -> AdapterPool:
        return self._pool

    @property
    def num_slots(self) -> int:
        return self._config.num_slots

    @property
    def max_rank(self) -> int:
        return self._config.max_rank

    @property
    def max_experts(self) -> int:
        return self._config.max_experts

    @property
    def top_k(self) -> int:
        return self._config.top_k

    @property
    def kernels(self) -> LayerKernels:
        """What the layers run: the config's choice, with "auto" resolved for the device."""
        return self._kernels

    @property
    def device(self) -> torch.device:
        return self._pool.device

    @property
    def dtype(self) -> torch.dtype:
        return self._pool.dtype

    @property
    def memory_bytes(self) -> int:
        """Bytes the pool holds on its device, whatever is loaded."""
        return self._pool.memory_bytes

    def load(self, slot: int, weights: LoraWeights) -> SlotInfo:
        """Copy one expert (and its gate, if any) into ``slot``, replacing its content.

        Raises ``InvalidAdapter`` for an adapter this pool cannot serve (rank,
        gate size, shapes, names), ``ValueError`` for a bad slot number.
        """
        return self._pool.load(slot, weights)

    def clear(self, slot: int) -> None:
        self._pool.clear(slot)

    def slot_info(self, slot: int) -> SlotInfo | None:
        """What ``slot`` holds, or None when it is empty."""
        return self._pool.info(slot)

    @contextmanager
    def routing(
        self,
        expert_slots: SlotIndices,
        gate_slots: SlotIndices | None = None,
        *,
        check: bool = True,
    ) -> Iterator[Route]:
        """Route the rows of every forward run inside this block.

        ``expert_slots`` is ``[batch, E]`` (or ``[batch]`` for one expert a
        row), ``1 <= E <= max_experts``, 0 = empty position; pad only to the
        widest row, since every position costs a rank's worth of compute.
        ``gate_slots`` is ``[batch]``: the slot whose gate mixes the row's
        experts (0 = plain sum). A gated row lists its experts in the gate's
        order: the gate's generalists, then the gate's own slot. With every
        gate slot 0 (given on the host) the layers skip the gate path, as with None.

        ``check`` validates every index against what is loaded; it reads the
        indices on the host, so pass CPU tensors or lists (a CUDA tensor
        costs a sync) or ``check=False`` once the engine guarantees them.
        """
        route = self._build_route(expert_slots, gate_slots, check=check)
        previous = self._routing.current
        self._routing.current = route
        try:
            yield route
        finally:
            self._routing.current = previous

    def _build_route(
        self, expert_slots: SlotIndices, gate_slots: SlotIndices | None, *, check: bool
    ) -> Route:
        slots = _index_tensor(expert_slots, "expert_slots")
        if slots.dim() == 1:
            slots = slots.unsqueeze(1)
        if slots.dim() != 2 or slots.shape[0] == 0:
            raise ValueError(
                f"expert_slots must be [batch, experts] with batch >= 1, got {list(slots.shape)}"
            )
        width = slots.shape[1]
        if not 1 <= width <= self.max_experts:
            raise ValueError(
                f"expert_slots has {width} positions per row; "
                f"this pool allows 1..{self.max_experts}"
            )
        gates = None
        if gate_slots is not None:
            gates = _index_tensor(gate_slots, "gate_slots")
            if tuple(gates.shape) != (slots.shape[0],):
                raise ValueError(
                    f"gate_slots must be [batch] = [{slots.shape[0]}], got {list(gates.shape)}"
                )
        if check:
            self._check_route(slots, gates)
        if gates is not None and gates.device.type == "cpu" and not bool(gates.any()):
            # No row has a gate: the layers then skip the gate path (a matmul,
            # a mask and a softmax each) instead of computing weights of 1.
            # Indices on the device are kept: reading them would cost a sync.
            gates = None
        return Route(
            expert_slots=slots.to(self.device).contiguous(),
            gate_slots=None if gates is None else gates.to(self.device),
            active_modules=self._active_modules(slots),
        )

    def _active_modules(self, slots: torch.Tensor) -> frozenset[ModuleKey] | None:
        """The modules any routed expert targets, when the indices are on the host."""
        if slots.device.type != "cpu":
            return None
        active: set[ModuleKey] = set()
        for slot in set(slots.view(-1).tolist()) - {0}:
            info = self.slot_info(slot)
            if info is not None:
                active |= info.modules
        return frozenset(active)

    def _check_route(self, slots: torch.Tensor, gates: torch.Tensor | None) -> None:
        rows: list[list[int]] = slots.tolist()
        gate_list: list[int] = [0] * len(rows) if gates is None else gates.tolist()
        for index, (row, gate) in enumerate(zip(rows, gate_list, strict=True)):
            for slot in [*row, gate]:
                if not 0 <= slot < self.num_slots:
                    raise ValueError(
                        f"row {index}: slot {slot} is out of range (0..{self.num_slots - 1})"
                    )
                if slot and self._pool.info(slot) is None:
                    raise ValueError(f"row {index}: slot {slot} holds no adapter")
            used = [slot for slot in row if slot]
            if len(used) != len(set(used)):
                raise ValueError(f"row {index}: a slot is listed twice in {row}")
            if gate:
                self._check_gated_row(index, row, gate)

    def _check_gated_row(self, index: int, row: list[int], gate: int) -> None:
        info = self._pool.info(gate)
        experts = 0 if info is None else info.gate_experts
        if experts == 0:
            raise ValueError(f"row {index}: gate slot {gate} holds an adapter without a gate")
        if experts > len(row):
            raise ValueError(
                f"row {index}: the gate of slot {gate} mixes {experts} experts but rows "
                f"have {len(row)} positions"
            )
        # The gate scores position e with its row e; anything else would mix
        # experts under the wrong scores without any error.
        if row[experts - 1] != gate:
            raise ValueError(
                f"row {index}: the gate's own slot {gate} must sit at position {experts - 1} "
                f"(after its {experts - 1} generalists), got {row}"
            )
        if any(row[experts:]):
            raise ValueError(
                f"row {index}: the gate of slot {gate} scores {experts} experts; "
                f"positions past those must be 0, got {row}"
            )

    def __repr__(self) -> str:
        loaded = sum(self._pool.info(slot) is not None for slot in range(1, self.num_slots))
        return (
            f"MultiLoraModel({type(self._model).__name__}, slots={loaded}/{self.num_slots - 1} "
            f"loaded, max_rank={self.max_rank}, max_experts={self.max_experts}, "
            f"top_k={self.top_k}, pool={self.memory_bytes / 2**20:.1f} MiB)"
        )


def _find_targets(
    model: nn.Module, target_modules: tuple[str, ...]
) -> dict[ModuleKey, tuple[str, nn.Linear]]:
    """The linears to wrap, by (layer, module), with their paths in ``model``."""
    targets: dict[ModuleKey, tuple[str, nn.Linear]] = {}
    for path, module in model.named_modules():
        if isinstance(module, MultiLoraLinear):
            raise ValueError(f"the model is already wrapped ({path})")
        match = _MODULE_PATH.search(path)
        if match is None or match["module"] not in target_modules:
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{path} is a {type(module).__name__}, not a linear layer")
        key = (int(match["layer"]), match["module"])
        if key in targets:
            raise ValueError(f"{targets[key][0]} and {path} both map to layer {key[0]} {key[1]}")
        targets[key] = (path, module)
    if not targets:
        raise ValueError(
            f"no {'/'.join(target_modules)} linear layers found under '...layers.N.(self_attn|mlp)'"
        )
    return targets


def _layer_kernels(choice: Kernels, device: torch.device) -> LayerKernels:
    """What the layers of a pool on ``device`` run for the config's ``choice``."""
    if choice == "torch" or (choice == "auto" and device.type != "cuda"):
        return "torch"
    try:
        # Lazily: this imports Triton, which only a Triton pool needs.
        from adapters.device.multi_lora import triton_kernels
    except ImportError:
        if choice == "auto":
            return "torch"
        raise
    # Compiled Triton kernels take CUDA tensors only; on the CPU only the
    # interpreter runs them, and that is for tests, not serving.
    if device.type != "cuda" and not triton_kernels.interpreted():
        raise ValueError(
            f"kernels='triton' needs the pool on a CUDA device, not {device} (on the CPU "
            "Triton runs only under its interpreter, TRITON_INTERPRET=1, for tests); "
            "use kernels='auto' or 'torch'"
        )
    return "triton"


def _adapter_dtype(model: nn.Module, weights: list[torch.Tensor]) -> torch.dtype:
    """The dtype the base layers compute in, which the pool follows."""
    for weight in weights:
        if weight.is_floating_point():
            return weight.dtype
    # Quantised weights (4-bit packed as uint8): the model's floating
    # parameters (embeddings, norms) carry the compute dtype.
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    raise ValueError("the model has no floating-point parameters to take a dtype from")


def _index_tensor(value: SlotIndices, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value
    else:
        try:
            tensor = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{name} must be a rectangular list of ints: {error}") from None
    if tensor.numel() == 0:
        raise ValueError(f"{name} is empty")
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must hold integer slot indices, got {tensor.dtype}")
    return tensor.long()

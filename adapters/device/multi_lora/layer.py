"""A linear layer that adds, to each batch row, that row's own LoRA experts.

For input ``x[B, L, in]`` and the row's expert slots ``s_1..s_E``:

    y = base(x) + sum_e w[b, l, e] * B[s_e] (A[s_e] x)       (scale folded into B)

Without a gate, ``w = 1`` (with one expert, that is plain LoRA). With a gate
(CoMiGS), ``logits = G[gate_slot] x``, empty positions are masked, the top-k
logits of each token are softmaxed and the rest get weight 0.

The forward gathers each row's experts from the pool and runs two batched
matmuls, with experts x rank flattened into one dimension: E experts of rank
r cost what one adapter of rank E*r costs. No Python loop over rows or slots,
no host sync, and every shape depends only on (B, L) and the routing width,
so the same code can be captured in a CUDA graph.

That is the torch path. The Triton path (``kernels="triton"``,
``triton_kernels.py``) computes the same sum in two fused launches that read
the slots straight from the pool instead of gathering copies of them; the
gate's weights are computed here the same way for both. The kernels have no
backward, so a forward that autograd records takes the torch path.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from adapters.device.multi_lora.gate import gate_weights
from adapters.device.multi_lora.pool import ModuleKey, ModulePool

# How a layer computes its experts' sum: the index_select + bmm path, or the
# fused Triton kernels (``MultiLoraConfig.kernels`` resolves "auto" to one).
LayerKernels = Literal["torch", "triton"]


@dataclass(frozen=True)
class Route:
    """The expert set of every row of one batch, already on the pool's device.

    Built and validated by ``MultiLoraModel.routing``; layers only read it.
    Nothing here is computed from the indices: a caller that passes int64
    tensors already on the device gets views of them, so it can update them
    in place between replays of a captured CUDA graph.
    """

    # [B, E] slot indices, 0 = empty position. E may be below the pool's
    # max_experts: the engine pads to the widest row of the batch only.
    expert_slots: torch.Tensor
    # [B] slot whose gate mixes the row's experts (0 = no gate), or None when
    # no row of the batch has one, which skips the gate entirely.
    gate_slots: torch.Tensor | None
    batch: int = field(init=False)
    width: int = field(init=False)
    # The wrapped modules that some routed expert has weights for; the
    # others add exactly zero and are skipped. None: run every module (when
    # the indices live on the device, reading them would cost a sync).
    active_modules: frozenset[ModuleKey] | None = None
    # expert_slots flattened to [B*E], the order the gathers want.
    flat_slots: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        # Every layer reads these on every forward; compute them once.
        object.__setattr__(self, "batch", self.expert_slots.shape[0])
        object.__setattr__(self, "width", self.expert_slots.shape[1])
        object.__setattr__(self, "flat_slots", self.expert_slots.view(-1))


class Routing:
    """The current ``Route``, shared by every ``MultiLoraLinear`` of one model.

    Set once per forward (or per ``generate`` call) and read by every layer,
    so the routing travels beside the model's own arguments rather than
    through them. ``None`` means no adapter for any row: the base model.
    """

    def __init__(self) -> None:
        self.current: Route | None = None


class MultiLoraLinear(nn.Module):
    """Wraps a base linear; the base is only ever called, never looked inside.

    That keeps any linear-like module (a bitsandbytes ``Linear4bit``, say)
    wrappable the same way.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        pool: ModulePool,
        routing: Routing,
        top_k: int,
        key: ModuleKey | None = None,
        kernels: LayerKernels = "torch",
    ) -> None:
        super().__init__()
        if kernels not in ("torch", "triton"):
            raise ValueError(f"kernels must be 'torch' or 'triton', got {kernels!r}")
        if kernels == "triton":
            # Imported here, not at the top: Triton is loaded only when used,
            # and a missing one fails here, at wrap time, with the module's message.
            importlib.import_module("adapters.device.multi_lora.triton_kernels")
        self.kernels: LayerKernels = kernels
        self.base_layer = base_layer
        self.key = key
        self.in_features = pool.in_features
        self.out_features = pool.out_features
        self.top_k = top_k
        # Plain attributes, not buffers: ``model.to()`` must not swap these for
        # copies, or the pool would go on loading into tensors nobody reads.
        self.lora_A = pool.lora_A
        self.lora_B = pool.lora_B
        self.gate = pool.gate
        self.has_gate = pool.has_gate
        self.routing = routing

    def extra_repr(self) -> str:
        slots, rank, _ = self.lora_A.shape
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_slots={slots}, max_rank={rank}, top_k={self.top_k}, kernels={self.kernels}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base_layer(x)
        route = self.routing.current
        if route is None:
            return y
        if route.active_modules is not None and self.key not in route.active_modules:
            return y
        batch = x.shape[0]
        if route.batch != batch:
            raise ValueError(
                f"the routing has {route.batch} rows but the batch has {batch}: route every "
                "row (generate() with num_beams or num_return_sequences multiplies rows)"
            )
        # On a GPU without graph capture every op here costs a kernel launch
        # or more, so no-op casts and views are skipped rather than called.
        dtype = self.lora_A.dtype
        x3 = x.reshape(batch, -1, self.in_features)
        if x3.dtype != dtype:
            x3 = x3.to(dtype)
        if self.kernels == "triton" and not (
            torch.is_grad_enabled() and (y.requires_grad or x3.requires_grad)
        ):
            return self._forward_triton(x3, y, route)

        # Experts x rank flattened into one dimension: [B, E*r, in] and
        # [B, E*r, out], each a view of one gather.
        a = self.lora_A.index_select(0, route.flat_slots).view(batch, -1, self.in_features)
        h = torch.bmm(x3, a.transpose(1, 2))
        if route.gate_slots is not None:
            h = self._mix(h, x3, route.expert_slots, route.gate_slots)
        b = self.lora_B.index_select(0, route.flat_slots).view(batch, -1, self.out_features)

        # The add is fused into the second matmul (beta=1) and lands in the
        # base output's own memory: no extra pass over it, no new tensor.
        if y.dtype == dtype and y.is_contiguous():
            y.view(batch, -1, self.out_features).baddbmm_(h, b)
            return y
        out = y.reshape(batch, -1, self.out_features).to(dtype).baddbmm_(h, b)
        return out.view(y.shape).to(y.dtype)

    def _forward_triton(self, x3: torch.Tensor, y: torch.Tensor, route: Route) -> torch.Tensor:
        """The same sum as the torch path, added into ``y`` by the fused kernels."""
        from adapters.device.multi_lora.triton_kernels import lora_expand, lora_shrink

        weights = None
        if route.gate_slots is not None:
            weights = self._gate_weights(x3, route.expert_slots, route.gate_slots)
        h = lora_shrink(x3, self.lora_A, route.expert_slots)
        # The expand adds into y's own memory (any float dtype), as baddbmm_ does.
        if not y.is_contiguous():
            y = y.contiguous()
        lora_expand(
            y.view(route.batch, -1, self.out_features), h, self.lora_B, route.expert_slots, weights
        )
        return y

    def _mix(
        self,
        h: torch.Tensor,
        x3: torch.Tensor,
        expert_slots: torch.Tensor,
        gate_slots: torch.Tensor,
    ) -> torch.Tensor:
        """``h`` ``[B, L, E*r]`` with each expert's rank block scaled by its gate weight."""
        batch, tokens, _ = h.shape
        width = expert_slots.shape[1]
        weights = self._gate_weights(x3, expert_slots, gate_slots).to(x3.dtype)
        return (h.view(batch, tokens, width, -1) * weights.unsqueeze(-1)).view(batch, tokens, -1)

    def _gate_weights(
        self, x3: torch.Tensor, expert_slots: torch.Tensor, gate_slots: torch.Tensor
    ) -> torch.Tensor:
        """Per-token expert weights ``[B, L, E]``, float32."""
        width = expert_slots.shape[1]
        gate = self.gate.index_select(0, gate_slots)[:, :width]
        # The softmax runs in float32 so that a bf16 pool does not coarsen the
        # mixture weights themselves.
        logits = torch.bmm(x3, gate.transpose(1, 2)).float()
        # The most negative finite value, not -inf: a row whose positions are
        # all empty then gets finite (uniform) weights over zero adapters,
        # i.e. exactly nothing, instead of NaN.
        empty = (expert_slots == 0).unsqueeze(1)
        logits = logits.masked_fill(empty, torch.finfo(logits.dtype).min)
        weights = gate_weights(logits, self.top_k)
        # In a module where the gate's slot has no gate tensor, its experts
        # are summed, as without a gate.
        gated = self.has_gate.index_select(0, gate_slots).view(-1, 1, 1)
        return torch.where(gated, weights, 1.0)

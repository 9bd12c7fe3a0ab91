"""Many LoRA experts in one batch: ``adapters.device.multi_lora`` against peft and a slow reference.

Runs on both real base models of the model store (each loaded once per
module) and on a tiny random llama for the checks that need no real weights.

Tolerance: float32 on CPU, ``atol=5e-4, rtol=1e-4`` on logits. Our layers and
peft compute the same sums in different orders (gathered slots through
batched matmuls against per-adapter linears on sub-batches; the scale folded
into B), and rounding of about 1e-7 per operation compounds over 18-30
layers into about 1e-4 on logits of magnitude about 30. peft's own mixed
batch differs from peft's single-adapter run by as much. Every adapter here
moves the logits by more than 0.1 (checked), hundreds of times the tolerance.
A row without experts must give exactly the base model's output, and is
compared exactly.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from adapters.device.multi_lora import MultiLoraConfig, MultiLoraLinear, MultiLoraModel
from adapters.errors import InvalidAdapter
from adapters.lora_weights import TARGET_MODULES, LoraWeights, tensor_name

MODEL_STORE = Path(
    os.environ.get(
        "TAILOR_TEST_MODEL_STORE", Path(__file__).resolve().parents[1] / "var" / "models"
    )
)
SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"

ATOL, RTOL = 5e-4, 1e-4
# The smallest change of the logits that counts as "the adapter did something".
MIN_EFFECT = 0.1

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# Three peft adapters of different ranks and target sets: (rank, alpha, modules).
PEFT_ADAPTERS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "r8all": (8, 16, TARGET_MODULES),
    "r4attn": (4, 8, ATTENTION),
    "r16mix": (16, 8, ("v_proj", "gate_proj", "up_proj", "down_proj")),
}
# Their slots in the shared wrapper; slots 5..7 are left for tests that load.
PEFT_SLOTS = {"r8all": 1, "r4attn": 2, "r16mix": 3}
NUM_SLOTS, MAX_RANK, MAX_EXPERTS = 8, 16, 4
SCRATCH_SLOT = 5

_MODULE_PATH = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")

# Tests that take the real base models; the tiny-model tests below need none.
needs_models = pytest.mark.models


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Base:
    name: str
    model: nn.Module
    input_ids: torch.Tensor
    # (layer, module) -> (in_features, out_features) of every target linear.
    shapes: dict[tuple[int, str], tuple[int, int]]


@dataclass(frozen=True)
class Wrapped:
    handle: MultiLoraModel
    model: nn.Module


# Loading a base model takes seconds: every test that takes one is slow.
@pytest.fixture(
    scope="module",
    params=[pytest.param(name, marks=pytest.mark.slow) for name in (SMOLLM2, GEMMA)],
)
def base(request: pytest.FixtureRequest) -> Base:
    name: str = request.param
    path = MODEL_STORE / name
    if not (path / "model.safetensors").exists():
        pytest.skip(f"no prepared model at {path} (run `tailor models prepare`)")
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train(False)  # eval() is untyped in transformers (mypy strict)
    vocab_size = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    # Short rows: the comparisons need a batch, not long sequences.
    input_ids = torch.randint(0, vocab_size, (4, 6), generator=generator)
    return Base(name, model, input_ids, _target_shapes(model))


@pytest.fixture(scope="module")
def base_logits(base: Base) -> torch.Tensor:
    return _logits(base.model, base.input_ids)


@pytest.fixture(scope="module")
def peft_model(base: Base) -> PeftModel:
    """peft on its own copy of the base, with the three adapters."""
    torch.manual_seed(1)
    model: PeftModel | None = None
    for name, (rank, alpha, modules) in PEFT_ADAPTERS.items():
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(modules))
        if model is None:
            model = get_peft_model(copy.deepcopy(base.model), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    assert model is not None
    # peft starts lora_B at zero, which would make every comparison vacuous.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for linear in module.lora_B.values():
                    assert isinstance(linear, nn.Linear)
                    linear.weight.normal_(0.0, 0.02, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def peft_weights(base: Base, peft_model: PeftModel) -> dict[str, LoraWeights]:
    return {name: _from_peft(peft_model, name, base.name) for name in PEFT_ADAPTERS}


@pytest.fixture(scope="module")
def wrapped(base: Base, peft_weights: dict[str, LoraWeights]) -> Wrapped:
    """Our wrapper on a fresh copy of the base, holding the peft adapters."""
    model = copy.deepcopy(base.model)
    handle = MultiLoraModel.wrap(
        model, num_slots=NUM_SLOTS, max_rank=MAX_RANK, max_experts=MAX_EXPERTS
    )
    for name, slot in PEFT_SLOTS.items():
        handle.load(slot, peft_weights[name])
    return Wrapped(handle, model)


@pytest.fixture
def scratch(wrapped: Wrapped) -> Iterator[Wrapped]:
    """The shared wrapper, with SCRATCH_SLOT.. emptied again afterwards."""
    yield wrapped
    for slot in range(SCRATCH_SLOT, NUM_SLOTS):
        wrapped.handle.clear(slot)


# --------------------------------------------------------------------------- helpers


def _target_shapes(model: nn.Module) -> dict[tuple[int, str], tuple[int, int]]:
    shapes = {}
    for path, module in model.named_modules():
        match = _MODULE_PATH.search(path)
        if match and match[2] in TARGET_MODULES and isinstance(module, nn.Linear):
            shapes[(int(match[1]), match[2])] = (module.in_features, module.out_features)
    return shapes


def _logits(model: nn.Module, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids, **kwargs).logits
    return logits


def _peft_logits(model: PeftModel, adapter: str, input_ids: torch.Tensor) -> torch.Tensor:
    model.set_adapter(adapter)
    return _logits(model, input_ids)


def _from_peft(model: PeftModel, adapter: str, base_model_id: str) -> LoraWeights:
    config = model.peft_config[adapter]
    assert isinstance(config, LoraConfig)
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    return LoraWeights(
        base_model_id=base_model_id,
        rank=config.r,
        alpha=config.lora_alpha,
        target_modules=tuple(sorted(config.target_modules or ())),
        tensors={name: tensor.detach().clone() for name, tensor in state.items()},
    )


def _random_expert(
    base: Base,
    *,
    rank: int,
    alpha: float,
    seed: int,
    gate_experts: tuple[str, ...] = (),
    gate_modules: Sequence[str] = (),
    gate_std: float | None = None,
) -> LoraWeights:
    """An expert on every target module; with ``gate_modules``, a gate there.

    ``gate_std`` None gives the gate's natural scale; 0 gives a zero gate.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for (layer, module), (in_features, out_features) in base.shapes.items():
        tensors[tensor_name(layer, module, "lora_A")] = torch.randn(
            rank, in_features, generator=generator
        ) / math.sqrt(in_features)
        tensors[tensor_name(layer, module, "lora_B")] = (
            torch.randn(out_features, rank, generator=generator) * 0.02
        )
        if module in gate_modules:
            std = 1 / math.sqrt(in_features) if gate_std is None else gate_std
            rows = len(gate_experts) + 1
            tensors[tensor_name(layer, module, "tailor_gate")] = (
                torch.randn(rows, in_features, generator=generator) * std
            )
    return LoraWeights(base.name, rank, alpha, TARGET_MODULES, tensors, gate_experts)


def _pool_slot_is_zero(handle: MultiLoraModel, slot: int) -> bool:
    return all(not tensor[slot].any() for tensor in handle.pool.tensors())


# --------------------------------------------------------------------------- 1. one adapter


@needs_models
def test_single_adapter_matches_peft(
    base: Base, peft_model: PeftModel, wrapped: Wrapped, base_logits: torch.Tensor
) -> None:
    expected = _peft_logits(peft_model, "r8all", base.input_ids)
    assert (expected - base_logits).abs().max() > MIN_EFFECT

    batch = base.input_ids.shape[0]
    with wrapped.handle.routing([PEFT_SLOTS["r8all"]] * batch):
        got = _logits(wrapped.model, base.input_ids)

    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------- 2. mixed batch


@needs_models
def test_mixed_batch_matches_peft_row_by_row(
    base: Base, peft_model: PeftModel, wrapped: Wrapped, base_logits: torch.Tensor
) -> None:
    rows = ["r8all", "r4attn", "r16mix", None]
    with wrapped.handle.routing([PEFT_SLOTS[name] if name else 0 for name in rows]):
        got = _logits(wrapped.model, base.input_ids)

    for index, name in enumerate(rows):
        if name is None:
            # No expert: exactly the base model, not merely close to it.
            assert torch.equal(got[index], base_logits[index])
            continue
        alone = _peft_logits(peft_model, name, base.input_ids)
        assert (alone[index] - base_logits[index]).abs().max() > MIN_EFFECT, name
        torch.testing.assert_close(got[index], alone[index], atol=ATOL, rtol=RTOL, msg=name)

    peft_mixed = _logits(
        peft_model, base.input_ids, adapter_names=[name or "__base__" for name in rows]
    )
    torch.testing.assert_close(got, peft_mixed, atol=ATOL, rtol=RTOL)


@needs_models
def test_outside_routing_the_model_is_the_base(
    base: Base, wrapped: Wrapped, base_logits: torch.Tensor
) -> None:
    with wrapped.handle.routing([1, 1, 1, 1]), wrapped.handle.routing([0, 0, 0, 0]):
        inner = _logits(wrapped.model, base.input_ids)
    assert torch.equal(inner, base_logits)
    assert torch.equal(_logits(wrapped.model, base.input_ids), base_logits)


# --------------------------------------------------------------------------- 3. mixture


@dataclass(frozen=True)
class RowSpec:
    """A batch row for the reference: experts by position, and whose gate mixes them."""

    experts: tuple[LoraWeights | None, ...]
    gate: LoraWeights | None = None


class ReferenceMixtureLinear(nn.Module):
    """The mixture written the slow, obvious way: per row, per token, per expert."""

    def __init__(
        self, base_layer: nn.Module, key: tuple[int, str], rows: Sequence[RowSpec], top_k: int
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.key = key
        self.rows = rows
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base_layer(x).clone()
        layer, module = self.key
        for b, row in enumerate(self.rows):
            gate = (
                None
                if row.gate is None
                else row.gate.tensors.get(tensor_name(layer, module, "tailor_gate"))
            )
            for t in range(x.shape[1]):
                token = x[b, t]
                weights = self._weights(token, row, gate)
                for weight, expert in zip(weights, row.experts, strict=True):
                    if expert is None or weight == 0.0:
                        continue
                    a = expert.tensors.get(tensor_name(layer, module, "lora_A"))
                    if a is None:
                        continue
                    b_ = expert.tensors[tensor_name(layer, module, "lora_B")]
                    out[b, t] += weight * expert.scale * (b_ @ (a @ token))
        return out

    def _weights(self, token: torch.Tensor, row: RowSpec, gate: torch.Tensor | None) -> list[float]:
        if gate is None:
            return [1.0] * len(row.experts)
        logits = {
            e: float(gate[e] @ token) for e, expert in enumerate(row.experts) if expert is not None
        }
        kept = sorted(logits, key=lambda e: logits[e], reverse=True)[: self.top_k]
        top = max(logits[e] for e in kept)
        total = sum(math.exp(logits[e] - top) for e in kept)
        return [
            math.exp(logits[e] - top) / total if e in kept else 0.0 for e in range(len(row.experts))
        ]


def _reference_model(base: Base, rows: Sequence[RowSpec], top_k: int) -> nn.Module:
    model = copy.deepcopy(base.model)
    for path, module in list(model.named_modules()):
        match = _MODULE_PATH.search(path)
        if match and match[2] in TARGET_MODULES:
            parent, _, attribute = path.rpartition(".")
            key = (int(match[1]), match[2])
            setattr(
                model.get_submodule(parent),
                attribute,
                ReferenceMixtureLinear(module, key, rows, top_k),
            )
    return model


@needs_models
@pytest.mark.parametrize("top_k", [1, 2])
def test_gated_mixture_matches_slow_reference(
    base: Base, base_logits: torch.Tensor, top_k: int
) -> None:
    generalist = _random_expert(base, rank=8, alpha=16, seed=10)
    # No gate on down_proj: there the gated rows fall back to a plain sum.
    specialist = _random_expert(
        base,
        rank=4,
        alpha=8,
        seed=11,
        gate_experts=("generalist",),
        gate_modules=[m for m in TARGET_MODULES if m != "down_proj"],
    )
    model = copy.deepcopy(base.model)
    handle = MultiLoraModel.wrap(
        model, num_slots=3, max_rank=8, max_experts=MAX_EXPERTS, top_k=top_k
    )
    handle.load(1, generalist)
    handle.load(2, specialist)

    # Mixed by the gate; gated with the generalist's position empty (masked
    # out); the generalist alone without a gate; nothing.
    expert_slots = [[1, 2], [0, 2], [1, 0], [0, 0]]
    gate_slots = [2, 2, 0, 0]
    rows = [
        RowSpec((generalist, specialist), specialist),
        RowSpec((None, specialist), specialist),
        RowSpec((generalist, None)),
        RowSpec((None, None)),
    ]
    with handle.routing(expert_slots, gate_slots):
        got = _logits(model, base.input_ids)
    expected = _logits(_reference_model(base, rows, top_k), base.input_ids)

    assert (expected[0] - base_logits[0]).abs().max() > MIN_EFFECT
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    assert torch.equal(got[3], base_logits[3])


@needs_models
def test_top_k_changes_the_mixture(base: Base) -> None:
    generalist = _random_expert(base, rank=8, alpha=16, seed=10)
    specialist = _random_expert(
        base, rank=4, alpha=8, seed=11, gate_experts=("g",), gate_modules=TARGET_MODULES
    )
    outputs = []
    for top_k in (1, 2):
        model = copy.deepcopy(base.model)
        handle = MultiLoraModel.wrap(model, num_slots=3, max_rank=8, top_k=top_k)
        handle.load(1, generalist)
        handle.load(2, specialist)
        with handle.routing([[1, 2]] * 4, [2] * 4):
            outputs.append(_logits(model, base.input_ids))
    assert (outputs[0] - outputs[1]).abs().max() > MIN_EFFECT


@needs_models
def test_zero_gate_with_top_k_all_averages_the_experts(base: Base) -> None:
    """Equal logits softmax to equal weights: with k = 2 experts, each weighs 1/2.

    So the mixture must equal the plain (ungated) sum of the two experts with
    their alpha halved, computed by the other code path.
    """
    generalist = _random_expert(base, rank=8, alpha=16, seed=20)
    specialist = _random_expert(
        base,
        rank=4,
        alpha=8,
        seed=21,
        gate_experts=("generalist",),
        gate_modules=TARGET_MODULES,
        gate_std=0.0,
    )
    halves = [
        replace(expert, alpha=expert.alpha / 2, gate_experts=(), tensors=_without_gate(expert))
        for expert in (generalist, specialist)
    ]
    model = copy.deepcopy(base.model)
    handle = MultiLoraModel.wrap(model, num_slots=5, max_rank=8, max_experts=2, top_k=2)
    for slot, expert in enumerate([generalist, specialist, *halves], start=1):
        handle.load(slot, expert)

    with handle.routing([[1, 2]] * 4, [2] * 4):
        mixed = _logits(model, base.input_ids)
    with handle.routing([[3, 4]] * 4):
        average = _logits(model, base.input_ids)
    with handle.routing([[1, 2]] * 4):
        plain_sum = _logits(model, base.input_ids)

    torch.testing.assert_close(mixed, average, atol=ATOL, rtol=RTOL)
    assert (mixed - plain_sum).abs().max() > MIN_EFFECT


def _without_gate(expert: LoraWeights) -> dict[str, torch.Tensor]:
    return {k: v for k, v in expert.tensors.items() if not k.endswith(".tailor_gate.weight")}


# --------------------------------------------------------------------------- 4. pool invariants


@needs_models
def test_load_and_clear_keep_pool_addresses(
    scratch: Wrapped, peft_weights: dict[str, LoraWeights]
) -> None:
    handle = scratch.handle
    addresses = [tensor.data_ptr() for tensor in handle.pool.tensors()]

    info = handle.load(SCRATCH_SLOT, peft_weights["r16mix"])
    assert info.rank == 16 and info.gate_experts == 0
    assert not _pool_slot_is_zero(handle, SCRATCH_SLOT)
    handle.load(SCRATCH_SLOT, peft_weights["r4attn"])  # replaces, zero-padding the rank
    handle.clear(SCRATCH_SLOT)

    assert [tensor.data_ptr() for tensor in handle.pool.tensors()] == addresses
    assert _pool_slot_is_zero(handle, SCRATCH_SLOT)
    assert _pool_slot_is_zero(handle, 0)
    assert handle.slot_info(SCRATCH_SLOT) is None


@needs_models
def test_memory_bytes_counts_the_whole_pool(base: Base, wrapped: Wrapped) -> None:
    per_slot = sum(
        MAX_RANK * (in_features + out_features) + MAX_EXPERTS * in_features
        for in_features, out_features in base.shapes.values()
    )
    expected = NUM_SLOTS * per_slot * 4 + NUM_SLOTS * len(base.shapes)  # float32 + bool
    assert wrapped.handle.memory_bytes == expected


@needs_models
def test_cleared_slot_gives_the_base_output(
    base: Base, scratch: Wrapped, peft_weights: dict[str, LoraWeights], base_logits: torch.Tensor
) -> None:
    handle = scratch.handle
    handle.load(SCRATCH_SLOT, peft_weights["r8all"])
    handle.clear(SCRATCH_SLOT)

    no_adapter = f"slot {SCRATCH_SLOT} holds no adapter"
    with pytest.raises(ValueError, match=no_adapter), handle.routing([SCRATCH_SLOT] * 4):
        pass
    with handle.routing([SCRATCH_SLOT] * 4, check=False):
        got = _logits(scratch.model, base.input_ids)
    assert torch.equal(got, base_logits)


def _renamed(name: str, new: str) -> Callable[[LoraWeights], LoraWeights]:
    def change(weights: LoraWeights) -> LoraWeights:
        tensors = dict(weights.tensors)
        tensors[new] = tensors.pop(name)
        return replace(weights, tensors=tensors)

    return change


def _changed(
    name: str, tensor: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[LoraWeights], LoraWeights]:
    def change(weights: LoraWeights) -> LoraWeights:
        return replace(weights, tensors={**weights.tensors, name: tensor(weights.tensors[name])})

    return change


Q0_A = tensor_name(0, "q_proj", "lora_A")
Q0_B = tensor_name(0, "q_proj", "lora_B")

INVALID_ADAPTERS: dict[str, tuple[Callable[[LoraWeights], LoraWeights], str]] = {
    "rank above max_rank": (
        lambda w: replace(
            w,
            rank=32,
            tensors={
                k: v.repeat(4, 1) if ".lora_A." in k else v.repeat(1, 4)
                for k, v in w.tensors.items()
            },
        ),
        r"rank 32 is outside what this pool holds \(1\.\.16\)",
    ),
    "too many gate experts": (
        lambda w: replace(
            w,
            gate_experts=("g1", "g2", "g3", "g4"),
            tensors={**w.tensors, tensor_name(0, "q_proj", "tailor_gate"): torch.zeros(5, 1)},
        ),
        r"the gate mixes 5 experts .* at most 4",
    ),
    "gate rows disagree with gate_experts": (
        lambda w: replace(
            w,
            gate_experts=("g1",),
            tensors={**w.tensors, tensor_name(0, "q_proj", "tailor_gate"): torch.zeros(3, 1)},
        ),
        r"layers\.0\.q_proj\.tailor_gate has shape \[3, 1\], expected \[2, ",
    ),
    "gate experts without a gate": (
        lambda w: replace(w, gate_experts=("g1",)),
        "gate_experts are listed but there are no tailor_gate tensors",
    ),
    "wrong in_features": (
        _changed(Q0_A, lambda t: torch.zeros(t.shape[0], t.shape[1] + 1)),
        r"layers\.0\.q_proj\.lora_A has shape \[8, \d+\], expected \[8, \d+\]",
    ),
    "unknown tensor": (
        _renamed(Q0_A, Q0_A.replace("lora_A", "lora_magnitude_vector")),
        "is not a LoRA tensor Tailor can serve",
    ),
    "module under the wrong block": (
        _renamed(Q0_A, Q0_A.replace("self_attn", "mlp")),
        "is not a LoRA tensor Tailor can serve",
    ),
    "layer the model lacks": (
        _renamed(Q0_A, Q0_A.replace("layers.0.", "layers.999.")),
        r"targets layers\.999\.q_proj, which this model does not have",
    ),
    "lora_A without lora_B": (
        lambda w: replace(w, tensors={k: v for k, v in w.tensors.items() if k != Q0_B}),
        r"layers\.0\.q_proj has lora_A but no lora_B",
    ),
    "non-finite values": (
        _changed(Q0_B, lambda t: torch.full_like(t, math.nan)),
        r"layers\.0\.q_proj\.lora_B has non-finite values",
    ),
    "integer tensor": (
        _changed(Q0_B, lambda t: t.to(torch.int64)),
        "not floating point",
    ),
    "no tensors": (
        lambda w: replace(w, tensors={}),
        "the adapter has no lora_A/lora_B tensors",
    ),
}


@needs_models
@pytest.mark.parametrize("case", list(INVALID_ADAPTERS))
def test_rejects_invalid_adapters_and_keeps_the_slot(
    scratch: Wrapped, peft_weights: dict[str, LoraWeights], case: str
) -> None:
    handle = scratch.handle
    handle.load(SCRATCH_SLOT, peft_weights["r4attn"])
    before = [tensor[SCRATCH_SLOT].clone() for tensor in handle.pool.tensors()]
    change, message = INVALID_ADAPTERS[case]

    with pytest.raises(InvalidAdapter, match=message):
        handle.load(SCRATCH_SLOT, change(peft_weights["r8all"]))

    after = [tensor[SCRATCH_SLOT] for tensor in handle.pool.tensors()]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    slot = handle.slot_info(SCRATCH_SLOT)
    assert slot is not None and slot.rank == 4


@needs_models
@pytest.mark.parametrize(
    ("slot", "message"),
    [
        (0, "slot 0 is reserved"),
        (NUM_SLOTS, rf"slot {NUM_SLOTS} is out of range: the pool has 0\.\.{NUM_SLOTS - 1}"),
        (-1, "slot -1 is out of range"),
        (True, "a slot is an int"),
    ],
)
def test_rejects_bad_slots(
    wrapped: Wrapped, peft_weights: dict[str, LoraWeights], slot: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        wrapped.handle.load(slot, peft_weights["r8all"])
    with pytest.raises(ValueError, match=message):
        wrapped.handle.clear(slot)


@needs_models
def test_rejects_bad_routing(
    base: Base, scratch: Wrapped, peft_weights: dict[str, LoraWeights]
) -> None:
    handle = scratch.handle
    specialist = _random_expert(
        base, rank=4, alpha=8, seed=30, gate_experts=("g",), gate_modules=["q_proj"]
    )
    handle.load(SCRATCH_SLOT, specialist)
    cases: list[tuple[Any, Any, str]] = [
        ([1, NUM_SLOTS], None, rf"row 1: slot {NUM_SLOTS} is out of range \(0\.\.7\)"),
        ([[1], [-1]], None, r"row 1: slot -1 is out of range"),
        ([1.0, 2.0], None, "must hold integer slot indices, got torch.float32"),
        (torch.tensor([True]), None, "must hold integer slot indices, got torch.bool"),
        ([[1, 2], [3]], None, "must be a rectangular list of ints"),
        ([], None, "expert_slots is empty"),
        (torch.ones(2, 2, 2, dtype=torch.long), None, r"must be \[batch, experts\]"),
        ([[1, 2, 3, 0, 0]], None, "5 positions per row; this pool allows 1..4"),
        ([[1, 1]], None, "row 0: a slot is listed twice"),
        ([1, 2], [0], r"gate_slots must be \[batch\] = \[2\], got \[1\]"),
        ([1, 2], [NUM_SLOTS, 0], "row 0: slot 8 is out of range"),
        ([[1, 2]], [1], "row 0: gate slot 1 holds an adapter without a gate"),
        ([[SCRATCH_SLOT]], [SCRATCH_SLOT], "mixes 2 experts but rows have 1 positions"),
        ([[SCRATCH_SLOT, 1]], [SCRATCH_SLOT], "must sit at position 1"),
        ([[1, SCRATCH_SLOT, 2]], [SCRATCH_SLOT], "positions past those must be 0"),
    ]
    for expert_slots, gate_slots, message in cases:
        with pytest.raises(ValueError, match=message), handle.routing(expert_slots, gate_slots):
            pass
    # The routing must cover every row of the batch it is used for.
    too_few_rows = "the routing has 3 rows but the batch has 4"
    with pytest.raises(ValueError, match=too_few_rows), handle.routing([1, 2, 3]):
        _logits(scratch.model, base.input_ids)
    # A good gated row passes: generalist first, then the gate's own slot.
    with handle.routing([[1, SCRATCH_SLOT, 0]], [SCRATCH_SLOT]) as route:
        assert route.width == 3


@needs_models
def test_cannot_wrap_twice(wrapped: Wrapped) -> None:
    with pytest.raises(ValueError, match="already wrapped"):
        MultiLoraModel.wrap(wrapped.model, num_slots=2, max_rank=4)


# --------------------------------------------------------------------------- tiny model


def _tiny_llama(dtype: torch.dtype = torch.float32) -> nn.Module:
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if dtype == torch.bfloat16:
        model = model.bfloat16()
    model.train(False)  # eval() is untyped in transformers (mypy strict)
    return model


def _tiny_expert(model: nn.Module, seed: int, *, rank: int = 4) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for (layer, module), (in_features, out_features) in _target_shapes(model).items():
        tensors[tensor_name(layer, module, "lora_A")] = torch.randn(
            rank, in_features, generator=generator
        ) / math.sqrt(in_features)
        tensors[tensor_name(layer, module, "lora_B")] = (
            torch.randn(out_features, rank, generator=generator) * 0.1
        )
    return LoraWeights("tiny", rank, 2 * rank, TARGET_MODULES, tensors)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_slots": 1}, "num_slots must be at least 2"),
        ({"max_rank": 0}, "max_rank must be at least 1"),
        ({"max_experts": 0, "top_k": 0}, "max_experts must be at least 1"),
        ({"top_k": 5}, r"top_k must be between 1 and max_experts \(4\)"),
        ({"top_k": 0}, "top_k must be between 1"),
        ({"num_slots": 2.0}, "num_slots must be an int"),
        ({"target_modules": ("q_proj", "lm_head")}, r"unknown target modules \['lm_head'\]"),
        ({"target_modules": ()}, "target_modules is empty"),
        ({"target_modules": ("q_proj", "q_proj")}, "lists a module twice"),
    ],
)
def test_config_is_validated(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"num_slots": 4, "max_rank": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiLoraConfig(**arguments)


def test_wraps_only_the_target_modules_and_follows_the_dtype() -> None:
    model = _tiny_llama(torch.bfloat16)
    expert = _tiny_expert(model, seed=1)
    handle = MultiLoraModel.wrap(model, num_slots=3, max_rank=4, target_modules=ATTENTION)
    wrapped = {
        path.rsplit(".", 1)[1]
        for path, module in model.named_modules()
        if isinstance(module, MultiLoraLinear)
    }
    assert wrapped == set(ATTENTION)
    assert handle.dtype == torch.bfloat16
    assert all(t.dtype in (torch.bfloat16, torch.bool) for t in handle.pool.tensors())

    with pytest.raises(InvalidAdapter, match="does not have or the pool does not wrap"):
        handle.load(1, expert)


def test_bfloat16_matches_float32_within_bfloat16_precision() -> None:
    input_ids = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(0))
    outputs = []
    for dtype in (torch.float32, torch.bfloat16):
        model = _tiny_llama(dtype)
        experts = [_tiny_expert(model, seed=1), _tiny_expert(model, seed=2, rank=2)]
        handle = MultiLoraModel.wrap(model, num_slots=3, max_rank=4)
        handle.load(1, experts[0])
        handle.load(2, experts[1])
        with handle.routing([1, 2, 0]):
            outputs.append(_logits(model, input_ids).float())
    # bf16 keeps 8 bits of mantissa: about 1e-2 relative after two layers.
    torch.testing.assert_close(outputs[1], outputs[0], atol=5e-2, rtol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_sees_slots_loaded_after_capture() -> None:
    """The point of a fixed pool: a captured graph reads whatever the slots hold now."""
    model = _tiny_llama(torch.bfloat16).cuda()
    experts = [_tiny_expert(model, seed) for seed in range(4)]
    handle = MultiLoraModel.wrap(model, num_slots=3, max_rank=4)
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(layer, MultiLoraLinear)
    x = torch.randn(2, 1, 32, device="cuda", dtype=torch.bfloat16)

    # Capture with other experts in the slots, then replace them.
    handle.load(1, experts[0])
    handle.load(2, experts[1])
    with handle.routing([1, 2]), torch.no_grad():
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)  # warm-up outside the graph, as capture requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = layer(x)

        handle.load(1, experts[2])
        handle.load(2, experts[3])
        graph.replay()
        eager = layer(x)
    torch.testing.assert_close(captured, eager)
    assert (captured - layer.base_layer(x)).abs().max() > MIN_EFFECT

"""The fused Triton multi-LoRA kernels against ``MultiLoraLinear``'s torch path (issue #19, item 4).

Every case wraps one tiny model with ``kernels="triton"``, loads the same six
experts (ranks from 2 to the pool's, so most are zero-padded; gates over one
and over three generalists; one gate present in some modules only), runs a
routing through it, then switches every layer to the torch path and runs the
same routing again: same pool, same route, same base layers. Rows without
experts must give the base output exactly.

Triton chooses between its compiler and its CPU interpreter when it decorates
a kernel, i.e. when ``adapters.device.multi_lora.triton_kernels`` is imported,
from ``TRITON_INTERPRET`` at that moment. So on the CPU the cases run in one
subprocess (this module run with ``python -m``) started with
``TRITON_INTERPRET=1``, which reports each case's figures as JSON; the tests
assert on them. Triton is in the lock: its absence fails these tests.

Tolerance: float32, ``atol=rtol=1e-5`` on outputs of magnitude about 1 (the
two paths sum the same products in another order); every case moves the
output by more than 0.1. bf16 is compared only on a CUDA GPU (the last tests):
under the interpreter of triton 3.9, ``tl.dot`` on bf16 operands multiplies
their uint16 storage and returns garbage, a fault of the interpreter alone.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adapters.device.multi_lora import MultiLoraConfig, MultiLoraLinear, MultiLoraModel
from adapters.lora_weights import LoraWeights, tensor_name

ROOT = Path(__file__).resolve().parents[1]

IN_FEATURES = 80  # not a power of two, and two K tiles of a prefill program
OUT_FEATURES = {"q_proj": 72, "v_proj": 24}  # two output blocks; one partial block
MODULES = tuple(OUT_FEATURES)
LAYERS = 2
NUM_SLOTS, MAX_EXPERTS = 7, 4
ATOL = RTOL = 1e-5
BF16_ATOL = BF16_RTOL = 3e-2
MIN_EFFECT = 0.1


@dataclass(frozen=True)
class Case:
    tokens: int
    expert_slots: list[list[int]]
    gate_slots: list[int] | None = None
    top_k: int = 2
    max_rank: int = 16


# Slots: 1 g1 (rank R), 2 g2 (rank 4, layer 0 only), 3 a specialist over g1,
# 4 a specialist over g1, g2 and g5, 5 g5 (rank R/2), 6 a specialist over g1
# whose gate is on v_proj only (its q_proj rows are a plain sum).
ONE_EXPERT = [[1], [2], [0], [5]]
EMPTY_POSITIONS = [[1, 2], [0, 5], [0, 0], [2, 0]]
FOUR_WIDE = [[1, 2, 5, 3], [5, 0, 0, 1], [0, 0, 0, 0]]
GATED_TWO = [[1, 3], [0, 3], [2, 0], [0, 0], [1, 6]]
GATED_TWO_GATES = [3, 3, 0, 0, 6]
GATED_FOUR = [[1, 2, 5, 4], [1, 0, 5, 4], [1, 3, 0, 0], [5, 0, 0, 0]]
GATED_FOUR_GATES = [4, 4, 3, 0]

CASES: dict[str, Case] = {
    "decode-one-expert": Case(1, ONE_EXPERT),
    "prefill-one-expert": Case(5, ONE_EXPERT),
    "decode-empty-positions": Case(1, EMPTY_POSITIONS),
    "prefill-empty-positions": Case(9, EMPTY_POSITIONS),
    "decode-max-experts": Case(1, FOUR_WIDE),
    "prefill-max-experts": Case(7, FOUR_WIDE),
    "prefill-two-token-blocks": Case(70, [[1, 0, 5], [2, 1, 0]]),
    "decode-layer-zero-only": Case(1, [[2], [0]]),
    "decode-gated-top1": Case(1, GATED_TWO, GATED_TWO_GATES, top_k=1),
    "prefill-gated-top1": Case(6, GATED_TWO, GATED_TWO_GATES, top_k=1),
    "decode-gated-top2-of-4": Case(1, GATED_FOUR, GATED_FOUR_GATES, top_k=2),
    "prefill-gated-top2-of-4": Case(6, GATED_FOUR, GATED_FOUR_GATES, top_k=2),
    "prefill-gated-top4-of-4": Case(3, GATED_FOUR, GATED_FOUR_GATES, top_k=4),
    "prefill-pool-rank-24": Case(4, EMPTY_POSITIONS, max_rank=24),
    "decode-pool-rank-80": Case(1, GATED_FOUR, GATED_FOUR_GATES, max_rank=80),
    "prefill-pool-rank-80": Case(5, GATED_FOUR, GATED_FOUR_GATES, max_rank=80),
}


# --------------------------------------------------------------------------- the tiny model


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(IN_FEATURES, OUT_FEATURES["q_proj"])
        self.v_proj = nn.Linear(IN_FEATURES, OUT_FEATURES["v_proj"])


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _Attention()


class _TinyModel(nn.Module):
    """Wrappable paths (``layers.N.self_attn.q_proj``); every target linear reads ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for layer in self.layers:
            assert isinstance(layer, _Layer)
            outputs += [layer.self_attn.q_proj(x), layer.self_attn.v_proj(x)]
        return torch.cat(outputs, dim=-1)


def _expert(
    seed: int,
    rank: int,
    *,
    layers: tuple[int, ...] = tuple(range(LAYERS)),
    gate_experts: tuple[str, ...] = (),
    gate_modules: tuple[str, ...] = (),
) -> LoraWeights:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers:
        for module in MODULES:
            out_features = OUT_FEATURES[module]
            tensors[tensor_name(layer, module, "lora_A")] = torch.randn(
                rank, IN_FEATURES, generator=generator
            ) / math.sqrt(IN_FEATURES)
            tensors[tensor_name(layer, module, "lora_B")] = torch.randn(
                out_features, rank, generator=generator
            ) / math.sqrt(rank)
            if module in gate_modules:
                # Large enough that top-k picks differ from token to token.
                tensors[tensor_name(layer, module, "tailor_gate")] = torch.randn(
                    len(gate_experts) + 1, IN_FEATURES, generator=generator
                )
    return LoraWeights("tiny", rank, rank, MODULES, tensors, gate_experts)


def _experts(max_rank: int) -> dict[int, LoraWeights]:
    return {
        1: _expert(1, max_rank),
        2: _expert(2, min(4, max_rank), layers=(0,)),
        3: _expert(3, min(2, max_rank), gate_experts=("g1",), gate_modules=MODULES),
        4: _expert(4, min(8, max_rank), gate_experts=("g1", "g2", "g5"), gate_modules=MODULES),
        5: _expert(5, max(1, max_rank // 2)),
        6: _expert(6, min(4, max_rank), gate_experts=("g1",), gate_modules=("v_proj",)),
    }


def _wrapped(case: Case, device: str, dtype: torch.dtype) -> tuple[nn.Module, MultiLoraModel]:
    torch.manual_seed(0)
    model = _TinyModel().to(device=device, dtype=dtype)
    handle = MultiLoraModel.wrap(
        model,
        num_slots=NUM_SLOTS,
        max_rank=case.max_rank,
        max_experts=MAX_EXPERTS,
        top_k=case.top_k,
        target_modules=MODULES,
        kernels="triton",
    )
    for slot, expert in _experts(case.max_rank).items():
        handle.load(slot, expert)
    return model, handle


def _set_kernels(model: nn.Module, kernels: str) -> None:
    for module in model.modules():
        if isinstance(module, MultiLoraLinear):
            module.kernels = "torch" if kernels == "torch" else "triton"


def run_case(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """One case's figures: the Triton path against the torch path on one pool and route."""
    case = CASES[name]
    model, handle = _wrapped(case, device, dtype)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(len(case.expert_slots), case.tokens, IN_FEATURES, generator=generator)
    x = x.to(device=device, dtype=dtype)
    with torch.no_grad():
        base = model(x)
        with handle.routing(case.expert_slots, case.gate_slots):
            triton_out = model(x)
            _set_kernels(model, "torch")
            torch_out = model(x)
    empty_rows = [row for row, slots in enumerate(case.expert_slots) if not any(slots)]
    return {
        "max_error": (triton_out.float() - torch_out.float()).abs().max().item(),
        # How far the reference moved from the base: the comparison is not vacuous.
        "effect": (torch_out.float() - base.float()).abs().max().item(),
        "magnitude": torch_out.float().abs().max().item(),
        "empty_rows_exact": all(torch.equal(triton_out[row], base[row]) for row in empty_rows),
        "output_dtype_kept": triton_out.dtype == dtype,
    }


def _autograd_takes_the_torch_path() -> bool:
    """With autograd recording, a Triton layer computes through torch (which has a backward)."""
    case = CASES["prefill-gated-top1"]
    model, handle = _wrapped(case, "cpu", torch.float32)
    x = torch.randn(len(case.expert_slots), case.tokens, IN_FEATURES, requires_grad=True)
    with handle.routing(case.expert_slots, case.gate_slots):
        recorded = model(x)
        recorded.sum().backward()
        with torch.no_grad():
            _set_kernels(model, "torch")
            reference = model(x)
    return bool(x.grad is not None and x.grad.abs().sum() > 0 and torch.equal(recorded, reference))


def _torch_path_imports_no_triton() -> bool:
    """``kernels="auto"`` on the CPU wraps, loads and runs without importing Triton."""
    model = _TinyModel()
    handle = MultiLoraModel.wrap(model, num_slots=3, max_rank=4, target_modules=MODULES)
    handle.load(1, _expert(1, 4))
    with torch.no_grad(), handle.routing([[1]]):
        model(torch.randn(1, 2, IN_FEATURES))
    return handle.kernels == "torch" and "triton" not in sys.modules


def _main() -> None:
    """What the subprocess reports: every case, under Triton's interpreter."""
    report: dict[str, Any] = {"torch_path_imports_no_triton": _torch_path_imports_no_triton()}
    from adapters.device.multi_lora import triton_kernels

    report["interpreted"] = triton_kernels.interpreted()
    cases: dict[str, Any] = {}
    for name in CASES:
        try:
            cases[name] = run_case(name)
        except Exception:  # reported per case, so one failure does not hide the others
            cases[name] = {"error": traceback.format_exc()}
    report["cases"] = cases
    report["autograd_takes_the_torch_path"] = _autograd_takes_the_torch_path()
    print(json.dumps(report))


# --------------------------------------------------------------------------- CPU, interpreted


@pytest.fixture(scope="module")
def interpreted_report() -> dict[str, Any]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_multi_lora_triton"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"the interpreted run failed:\n{result.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["interpreted"], "TRITON_INTERPRET=1 did not select Triton's interpreter"
    return report


@pytest.mark.slow  # the interpreter's subprocess takes ~8 s: `make test`, not `make check`
@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_the_torch_path(interpreted_report: dict[str, Any], name: str) -> None:
    figures = interpreted_report["cases"][name]
    assert "error" not in figures, figures.get("error")
    assert figures["effect"] > MIN_EFFECT
    assert figures["max_error"] <= ATOL + RTOL * figures["magnitude"], figures
    assert figures["empty_rows_exact"]
    assert figures["output_dtype_kept"]


@pytest.mark.slow
def test_autograd_takes_the_torch_path(interpreted_report: dict[str, Any]) -> None:
    assert interpreted_report["autograd_takes_the_torch_path"]


@pytest.mark.slow
def test_the_torch_path_never_imports_triton(interpreted_report: dict[str, Any]) -> None:
    assert interpreted_report["torch_path_imports_no_triton"]


# --------------------------------------------------------------------------- choosing kernels


@pytest.mark.parametrize("kernels", ["cuda", "", "Triton", None, 1])
def test_config_rejects_unknown_kernels(kernels: Any) -> None:
    with pytest.raises(ValueError, match="kernels must be one of 'auto', 'torch', 'triton'"):
        MultiLoraConfig(num_slots=4, max_rank=8, kernels=kernels)


def test_config_rejects_triton_when_it_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes both find_spec and import report the package missing.
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ValueError, match="kernels='triton' needs the triton package"):
        MultiLoraConfig(num_slots=4, max_rank=8, kernels="triton")
    assert MultiLoraConfig(num_slots=4, max_rank=8, kernels="auto").kernels == "auto"
    assert MultiLoraConfig(num_slots=4, max_rank=8, kernels="torch").kernels == "torch"


def test_auto_is_torch_on_the_cpu() -> None:
    model = _TinyModel()
    handle = MultiLoraModel.wrap(model, num_slots=3, max_rank=4, target_modules=MODULES)
    assert handle.config.kernels == "auto"
    assert handle.kernels == "torch"
    layers = [m for m in model.modules() if isinstance(m, MultiLoraLinear)]
    assert len(layers) == LAYERS * len(MODULES)
    assert all(layer.kernels == "torch" for layer in layers)


def test_triton_on_the_cpu_is_refused_without_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adapters.device.multi_lora import triton_kernels

    monkeypatch.setattr(triton_kernels, "interpreted", lambda: False)
    model = _TinyModel()
    with pytest.raises(ValueError, match="kernels='triton' needs the pool on a CUDA device"):
        MultiLoraModel.wrap(
            model, num_slots=3, max_rank=4, target_modules=MODULES, kernels="triton"
        )
    # Refused before any layer was replaced.
    assert not any(isinstance(m, MultiLoraLinear) for m in model.modules())


def _kernel_inputs() -> dict[str, torch.Tensor]:
    return {
        "x": torch.zeros(2, 3, 8),
        "lora_A": torch.zeros(4, 16, 8),
        "lora_B": torch.zeros(4, 16, 5),
        "slots": torch.zeros(2, 1, dtype=torch.long),
        "h": torch.zeros(2, 3, 16),
        "y": torch.zeros(2, 3, 5),
        "weights": torch.zeros(2, 3, 1),
    }


@pytest.mark.parametrize(
    ("kernel", "change", "message"),
    [
        ("shrink", {"x": torch.zeros(2, 3, 9)}, "x has 9 features but lora_A takes 8"),
        ("shrink", {"x": torch.zeros(2, 3, 8, dtype=torch.float64)}, "cast x first"),
        ("shrink", {"x": torch.zeros(6, 8)}, r"x must be \[B, L, in\]"),
        ("shrink", {"slots": torch.zeros(3, 1, dtype=torch.long)}, "slots has 3 rows but x has 2"),
        ("shrink", {"slots": torch.zeros(2, 1)}, "int32 or int64 slot indices"),
        ("expand", {"slots": torch.zeros(2, 0, dtype=torch.long)}, r"slots must be \[B, E\]"),
        ("expand", {"h": torch.zeros(2, 3, 32)}, r"h must be \[B, L, E\*R\] = \[2, 3, 16\]"),
        ("expand", {"h": torch.zeros(2, 3, 16, dtype=torch.float64)}, "h must be float32"),
        ("expand", {"y": torch.zeros(2, 3, 6)}, "y has 6 features but lora_B gives 5"),
        ("expand", {"weights": torch.zeros(2, 3, 2)}, r"weights must be \[B, L, E\] = \[2, 3, 1\]"),
    ],
)
def test_the_kernel_wrappers_check_shapes(
    kernel: str, change: dict[str, torch.Tensor], message: str
) -> None:
    from adapters.device.multi_lora.triton_kernels import lora_expand, lora_shrink

    inputs = {**_kernel_inputs(), **change}
    # The checks run before any launch, so no interpreter is needed to reach them.
    with pytest.raises(ValueError, match=message):
        if kernel == "shrink":
            lora_shrink(inputs["x"], inputs["lora_A"], inputs["slots"])
        else:
            lora_expand(
                inputs["y"], inputs["h"], inputs["lora_B"], inputs["slots"], inputs["weights"]
            )


# --------------------------------------------------------------------------- CUDA, compiled

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_compiled_triton_matches_the_torch_path_on_cuda(name: str, dtype: torch.dtype) -> None:
    figures = run_case(name, "cuda", dtype)
    atol, rtol = (ATOL, RTOL) if dtype == torch.float32 else (BF16_ATOL, BF16_RTOL)
    assert figures["effect"] > MIN_EFFECT
    assert figures["max_error"] <= atol + rtol * figures["magnitude"], figures
    assert figures["empty_rows_exact"]
    assert figures["output_dtype_kept"]


@needs_cuda
def test_a_captured_triton_forward_reads_the_slots_loaded_after_capture() -> None:
    case = CASES["decode-gated-top2-of-4"]
    model, handle = _wrapped(case, "cuda", torch.bfloat16)
    assert handle.kernels == "triton"
    x = torch.randn(len(case.expert_slots), 1, IN_FEATURES, device="cuda", dtype=torch.bfloat16)
    slots = torch.tensor(case.expert_slots, device="cuda")
    gates = torch.tensor(case.gate_slots, device="cuda")
    with torch.no_grad(), handle.routing(slots, gates, check=False):
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(x)  # compiles the kernels outside the graph, as capture requires
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(x)
        handle.load(1, _expert(11, case.max_rank))
        graph.replay()
        eager = model(x)
    torch.testing.assert_close(captured, eager)


if __name__ == "__main__":
    _main()

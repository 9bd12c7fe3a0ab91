"""Adapter validation, Tailor's adapter file and PEFT interop, on the real base models.

Good adapters are made by peft itself on the real SmolLM2 and Gemma weights;
bad ones are those adapters damaged one way each. Every refusal must say what
is wrong, and no pickle may ever be unpickled.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from adapters.base_shapes import BaseModelShapes, ModuleShape
from adapters.errors import InvalidAdapter
from adapters.file_format import FORMAT, deserialize, serialize
from adapters.lora_weights import TARGET_MODULES, LoraWeights, tensor_name
from adapters.peft_interop import (
    GATE_FILE,
    export_peft_dir,
    import_peft_dir,
    import_peft_files,
)
from adapters.validation import BaseModelSpec, ValidationLimits, validate_safetensors
from models.store import load_prepared
from tests.server import prepared_model_store

pytestmark = pytest.mark.models

SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
RANK = 8
ALPHA = 16
LIMITS = ValidationLimits()
# Token ids that exist in SmolLM2's vocabulary; no tokenizer needed.
INPUT_IDS = torch.tensor([[1, 504, 3458, 282, 4649, 314, 7042, 30]])


@dataclass(frozen=True)
class PeftAdapter:
    """A real peft adapter directory and its parts."""

    directory: Path
    config: dict[str, Any]
    weights: bytes

    def tensors(self) -> dict[str, torch.Tensor]:
        return load_safetensors(self.weights)

    def config_json(self, **changes: Any) -> bytes:
        return json.dumps({**self.config, **changes}).encode()


@pytest.fixture(scope="module")
def specs() -> dict[str, BaseModelSpec]:
    return {m.id: BaseModelSpec.from_prepared(m) for m in load_prepared(prepared_model_store())}


def _model_dir(model_id: str) -> Path:
    return prepared_model_store() / model_id


def _make_peft_adapter(model_id: str, directory: Path) -> tuple[Any, PeftAdapter]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(_model_dir(model_id))
    config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=list(TARGET_MODULES),
        init_lora_weights=False,  # peft's default zeroes B: the adapter would change nothing
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.05)  # keep the model's output sensible
    model.eval()
    model.save_pretrained(str(directory), safe_serialization=True)
    adapter = PeftAdapter(
        directory=directory,
        config=json.loads((directory / "adapter_config.json").read_text()),
        weights=(directory / "adapter_model.safetensors").read_bytes(),
    )
    return model, adapter


@pytest.fixture(scope="module")
def smollm_peft(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, PeftAdapter]:
    return _make_peft_adapter(SMOLLM2, tmp_path_factory.mktemp("smollm-peft"))


@pytest.fixture(scope="module")
def smollm(smollm_peft: tuple[Any, PeftAdapter]) -> PeftAdapter:
    return smollm_peft[1]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> PeftAdapter:
    # Only the files are kept: the 1 GB model is freed once the fixture returns.
    return _make_peft_adapter(GEMMA, tmp_path_factory.mktemp("gemma-peft"))[1]


def _safetensors_bytes(header: dict[str, Any], data: bytes) -> bytes:
    """A safetensors file with exactly this header, for damage no library would write."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _refusal(call: Callable[[], object]) -> str:
    with pytest.raises(InvalidAdapter) as caught:
        call()
    return caught.value.reason


def _assert_same(left: LoraWeights, right: LoraWeights) -> None:
    assert (left.base_model_id, left.rank, left.alpha) == (
        right.base_model_id,
        right.rank,
        right.alpha,
    )
    assert left.target_modules == right.target_modules
    assert left.gate_experts == right.gate_experts
    assert left.tensors.keys() == right.tensors.keys()
    for name, tensor in left.tensors.items():
        assert tensor.dtype == right.tensors[name].dtype
        assert torch.equal(tensor, right.tensors[name]), name


# --- base model shapes -------------------------------------------------------


@pytest.mark.parametrize("model_id", [SMOLLM2, GEMMA])
def test_shapes_from_config_match_the_real_weights(model_id: str) -> None:
    shapes = BaseModelShapes.from_model_dir(_model_dir(model_id))
    with safe_open(str(_model_dir(model_id) / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
        layers = {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}
        assert layers == set(range(shapes.num_layers))
        for layer in range(shapes.num_layers):
            for module, shape in shapes.modules.items():
                block = (
                    "self_attn"
                    if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
                    else "mlp"
                )
                real = weights.get_slice(
                    f"model.layers.{layer}.{block}.{module}.weight"
                ).get_shape()
                assert real == [shape.out_features, shape.in_features], (layer, module)
    assert shapes.target_modules == TARGET_MODULES


def test_shapes_of_other_architectures() -> None:
    llama_like = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "num_hidden_layers": 3,
    }
    mistral = BaseModelShapes.from_config({"model_type": "mistral", "head_dim": None, **llama_like})
    assert mistral.modules["k_proj"] == ModuleShape(64, 16)
    assert mistral.modules["down_proj"] == ModuleShape(128, 64)
    qwen2 = BaseModelShapes.from_config({"model_type": "qwen2", **llama_like})
    assert qwen2.modules == mistral.modules
    gemma3 = BaseModelShapes.from_config(
        {
            "model_type": "gemma3",
            "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": {**llama_like, "head_dim": 32},
        }
    )
    assert gemma3.model_type == "gemma3_text"
    assert gemma3.modules["q_proj"] == ModuleShape(64, 256)
    assert gemma3.modules["o_proj"] == ModuleShape(256, 64)
    with pytest.raises(ValueError, match="unsupported base model architecture 'gpt2'"):
        BaseModelShapes.from_config({"model_type": "gpt2", **llama_like})
    with pytest.raises(ValueError, match="intermediate_size"):
        BaseModelShapes.from_config({"model_type": "llama", **llama_like, "intermediate_size": 0})


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_rank"):
        ValidationLimits(max_rank=0)
    with pytest.raises(ValueError, match="allowed_dtypes"):
        ValidationLimits(allowed_dtypes=frozenset({"int8"}))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_update_rms"):
            ValidationLimits(max_update_rms=bad)
        with pytest.raises(ValueError, match="max_weight_abs"):
            ValidationLimits(max_weight_abs=bad)
    assert ValidationLimits().max_file_bytes == 64 << 20


# --- good adapters -----------------------------------------------------------


@pytest.mark.parametrize("model_id", [SMOLLM2, GEMMA])
def test_a_peft_adapter_imports(
    model_id: str, smollm: PeftAdapter, gemma: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    adapter = {SMOLLM2: smollm, GEMMA: gemma}[model_id]
    weights = import_peft_dir(adapter.directory, base=specs[model_id], limits=LIMITS)
    assert weights.base_model_id == model_id
    assert (weights.rank, weights.alpha, weights.scale) == (RANK, ALPHA, ALPHA / RANK)
    assert weights.target_modules == TARGET_MODULES
    assert not weights.has_gate
    original = adapter.tensors()
    assert weights.tensors.keys() == original.keys()
    assert len(original) == specs[model_id].shapes.num_layers * len(TARGET_MODULES) * 2
    for name, tensor in weights.tensors.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        assert torch.equal(tensor, original[name])


def test_half_precision_tensors_are_converted_to_float32_exactly(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    halves = {
        name: tensor.to(torch.bfloat16 if i % 2 else torch.float16)
        for i, (name, tensor) in enumerate(smollm.tensors().items())
    }
    weights = import_peft_files(
        smollm.config_json(), save_safetensors(halves), base=specs[SMOLLM2], limits=LIMITS
    )
    for name, tensor in weights.tensors.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, halves[name].to(torch.float32))


def test_peft_round_trip_is_bit_identical(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec], tmp_path: Path
) -> None:
    first = import_peft_dir(smollm.directory, base=specs[SMOLLM2], limits=LIMITS)
    export_peft_dir(first, tmp_path / "exported")
    assert not (tmp_path / "exported" / GATE_FILE).exists()
    second = import_peft_dir(tmp_path / "exported", base=specs[SMOLLM2], limits=LIMITS)
    _assert_same(first, second)
    original = smollm.tensors()
    for name, tensor in second.tensors.items():
        assert torch.equal(tensor, original[name])


def test_tailor_file_round_trip_is_bit_identical(
    gemma: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    spec = specs[GEMMA]
    weights = import_peft_dir(gemma.directory, base=spec, limits=LIMITS)
    data = serialize(weights, base_model_sha256=spec.sha256)
    metadata = _header_metadata(data)
    assert metadata["format"] == FORMAT
    assert (metadata["base_model_id"], metadata["base_model_sha256"]) == (GEMMA, spec.sha256)
    assert (metadata["rank"], metadata["alpha"]) == ("8", "16.0")
    assert json.loads(metadata["target_modules"]) == list(TARGET_MODULES)
    assert json.loads(metadata["gate_experts"]) == []
    _assert_same(deserialize(data, base=spec, limits=LIMITS), weights)


def _header_metadata(data: bytes) -> dict[str, str]:
    length = struct.unpack("<Q", data[:8])[0]
    metadata: dict[str, str] = json.loads(data[8 : 8 + length])["__metadata__"]
    return metadata


@pytest.mark.slow
def test_exported_directory_loads_in_peft_with_the_same_logits(
    smollm_peft: tuple[Any, PeftAdapter], specs: dict[str, BaseModelSpec], tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source_model, adapter = smollm_peft
    weights = import_peft_dir(adapter.directory, base=specs[SMOLLM2], limits=LIMITS)
    export_peft_dir(weights, tmp_path / "exported")
    fresh = AutoModelForCausalLM.from_pretrained(_model_dir(SMOLLM2))
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "exported").eval()
    with torch.no_grad():
        expected = source_model(input_ids=INPUT_IDS).logits
        actual = loaded(input_ids=INPUT_IDS).logits
        with loaded.disable_adapter():
            without_adapter = loaded(input_ids=INPUT_IDS).logits
    assert torch.isfinite(expected).all()
    assert torch.equal(actual, expected)
    assert not torch.allclose(without_adapter, expected, atol=1e-3)  # the adapter does act


def test_rslora_is_folded_into_alpha(smollm: PeftAdapter, specs: dict[str, BaseModelSpec]) -> None:
    weights = import_peft_files(
        smollm.config_json(use_rslora=True), smollm.weights, base=specs[SMOLLM2], limits=LIMITS
    )
    assert math.isclose(weights.scale, ALPHA / math.sqrt(RANK), rel_tol=1e-12)


def _with_gate(weights: LoraWeights, experts: tuple[str, ...], rows: int) -> LoraWeights:
    generator = torch.Generator().manual_seed(0)
    gates = {}
    for name in weights.tensors:
        if name.endswith(".lora_A.weight"):
            in_features = weights.tensors[name].shape[1]
            gate_name = name.replace(".lora_A.weight", ".tailor_gate.weight")
            gates[gate_name] = torch.randn(rows, in_features, generator=generator)
    return replace(weights, tensors={**weights.tensors, **gates}, gate_experts=experts)


def test_a_gate_travels_in_both_formats(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec], tmp_path: Path
) -> None:
    spec = specs[SMOLLM2]
    plain = import_peft_dir(smollm.directory, base=spec, limits=LIMITS)
    gated = _with_gate(plain, ("generalist-1", "generalist-2"), rows=3)
    _assert_same(
        deserialize(serialize(gated, base_model_sha256=spec.sha256), base=spec, limits=LIMITS),
        gated,
    )

    export_peft_dir(gated, tmp_path / "gated")
    peft_file = load_safetensors((tmp_path / "gated" / "adapter_model.safetensors").read_bytes())
    assert not any("tailor_gate" in name for name in peft_file)  # peft expects only its own keys
    _assert_same(import_peft_dir(tmp_path / "gated", base=spec, limits=LIMITS), gated)

    export_peft_dir(plain, tmp_path / "gated")  # a stale gate file must not survive
    assert not (tmp_path / "gated" / GATE_FILE).exists()
    _assert_same(import_peft_dir(tmp_path / "gated", base=spec, limits=LIMITS), plain)


def test_gate_rows_must_match_gate_experts(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    spec = specs[SMOLLM2]
    plain = import_peft_dir(smollm.directory, base=spec, limits=LIMITS)
    wrong_rows = serialize(_with_gate(plain, ("g1",), rows=3), base_model_sha256=spec.sha256)
    reason = _refusal(lambda: deserialize(wrong_rows, base=spec, limits=LIMITS))
    assert "down_proj.tailor_gate.weight has shape [3, 1536], expected [2, 1536]" in reason
    too_many = serialize(
        _with_gate(plain, tuple(f"g{i}" for i in range(8)), rows=9), base_model_sha256=spec.sha256
    )
    reason = _refusal(lambda: deserialize(too_many, base=spec, limits=LIMITS))
    assert "the gate scores 9 experts" in reason and "limit of 8" in reason
    no_gates = serialize(replace(plain, gate_experts=("g1",)), base_model_sha256=spec.sha256)
    assert "tailor_gate.weight is missing" in _refusal(
        lambda: deserialize(no_gates, base=spec, limits=LIMITS)
    )


# --- pickles: refused, never unpickled ---------------------------------------


class _Trap:
    """Unpickling this creates ``marker``: proof that someone unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.mkdir, (str(self.marker),))


def test_the_trap_is_armed(tmp_path: Path) -> None:
    # Our own payload, unpickled on purpose, so that the tests below prove something.
    marker = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "pickle-2", "pickle-3", "pickle-4", "pickle-5"])
def test_pickles_are_refused_without_unpickling(
    kind: str, smollm: PeftAdapter, specs: dict[str, BaseModelSpec], tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    if kind == "torch.save":
        path = tmp_path / "trap.pt"
        torch.save({"weights": _Trap(marker)}, path)
        payload, expected = path.read_bytes(), "zip archive (a torch.save checkpoint"
    else:
        payload = pickle.dumps(_Trap(marker), protocol=int(kind[-1]))
        expected = "is a Python pickle; pickle files are not accepted"
    spec = specs[SMOLLM2]
    assert expected in _refusal(
        lambda: import_peft_files(smollm.config_json(), payload, base=spec, limits=LIMITS)
    )
    assert expected in _refusal(lambda: deserialize(payload, base=spec, limits=LIMITS))
    assert not marker.exists()


def test_a_peft_bin_file_is_refused_without_opening_it(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec], tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    (tmp_path / "adapter_config.json").write_bytes(smollm.config_json())
    torch.save({"weights": _Trap(marker)}, tmp_path / "adapter_model.bin")
    reason = _refusal(lambda: import_peft_dir(tmp_path, base=specs[SMOLLM2], limits=LIMITS))
    assert "pickle files are not accepted; save with safe_serialization=True" in reason
    assert not marker.exists()


# --- damaged or foreign adapters ---------------------------------------------


def _retensor(adapter: PeftAdapter, change: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    tensors = adapter.tensors()
    change(tensors)
    return save_safetensors(tensors)


Q_A = tensor_name(3, "q_proj", "lora_A")
Q_B = tensor_name(3, "q_proj", "lora_B")


def _set(name: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = value

    return change


def _poison(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[Q_B] = tensors[Q_B].clone()
        tensors[Q_B][5, 2] = value

    return change


def _drop(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        del tensors[name]

    return change


def _move_layer(source: int, target: int) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        for name in [n for n in tensors if f".layers.{source}." in n]:
            tensors[name.replace(f".layers.{source}.", f".layers.{target}.")] = tensors.pop(name)

    return change


def _add_embedding_lora(tensors: dict[str, torch.Tensor]) -> None:
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(RANK, 49152)


def _overlapping(adapter: PeftAdapter) -> bytes:
    a, b = torch.ones(RANK, 576), torch.ones(576, RANK)
    size = a.numel() * 4
    header = {
        Q_A: {"dtype": "F32", "shape": [RANK, 576], "data_offsets": [0, size]},
        Q_B: {"dtype": "F32", "shape": [576, RANK], "data_offsets": [size // 2, size // 2 + size]},
    }
    return _safetensors_bytes(header, a.numpy().tobytes() + b.numpy().tobytes()[: size // 2])


def _duplicate_name(adapter: PeftAdapter) -> bytes:
    entry = '{"dtype": "F32", "shape": [8, 576], "data_offsets": [0, 18432]}'
    raw = f'{{"{Q_A}": {entry}, "{Q_A}": {entry}}}'.encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(18432)


def _deeply_nested(adapter: PeftAdapter) -> bytes:
    raw = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return struct.pack("<Q", len(raw)) + raw


def _gap(adapter: PeftAdapter) -> bytes:
    header = {Q_A: {"dtype": "F32", "shape": [RANK, 576], "data_offsets": [4, 4 + RANK * 576 * 4]}}
    return _safetensors_bytes(header, bytes(4 + RANK * 576 * 4))


REFUSALS: list[tuple[str, Callable[[PeftAdapter], bytes], str]] = [
    ("duplicate name", _duplicate_name, f"not valid JSON (duplicate key '{Q_A}')"),
    ("deep nesting", _deeply_nested, "not valid JSON"),
    ("gap", _gap, f"4 unused bytes before tensor {Q_A}"),
    (
        "huge layer index",
        lambda a: _retensor(a, _move_layer(0, 10**12)),
        "has a layer index beyond any model",
    ),
    (
        "truncated",
        lambda a: a.weights[: len(a.weights) // 2],
        "adapter_model.safetensors is truncated: tensor",
    ),
    ("truncated header", lambda a: a.weights[:100], "truncated or not a safetensors file"),
    (
        "junk header length",
        lambda a: b"\xff" * 8 + a.weights[8:],
        "header length of 18446744073709551615",
    ),
    ("not json", lambda a: a.weights[:8] + b"{" + b"\x00" * 20 + a.weights[29:], "not valid JSON"),
    ("overlapping offsets", _overlapping, f"tensors {Q_A} and {Q_B} overlap"),
    ("trailing junk", lambda a: a.weights + b"junk", "4 bytes of trailing data"),
    (
        "wrong shape",
        lambda a: _retensor(a, _set(Q_A, torch.zeros(RANK, 512))),
        f"tensor {Q_A} has shape [8, 512], expected [8, 576] for {SMOLLM2}",
    ),
    (
        "inconsistent rank",
        lambda a: _retensor(a, _set(Q_B, torch.zeros(576, 4))),
        f"tensor {Q_B} has shape [576, 4], expected [576, 8]",
    ),
    ("nan", lambda a: _retensor(a, _poison(math.nan)), f"tensor {Q_B} holds 1 NaN and 0 infinite"),
    ("inf", lambda a: _retensor(a, _poison(-math.inf)), f"tensor {Q_B} holds 0 NaN and 1 infinite"),
    (
        "embed_tokens",
        lambda a: _retensor(a, _add_embedding_lora),
        "tensor base_model.model.model.embed_tokens.lora_embedding_A is not a LoRA weight",
    ),
    (
        "layer beyond the model",
        lambda a: _retensor(a, _move_layer(0, 30)),
        f"is for layer 30, but {SMOLLM2} has 30 layers (0..29)",
    ),
    ("A without B", lambda a: _retensor(a, _drop(Q_B)), f"tensor {Q_B} is missing (lora_A"),
    (
        "int8",
        lambda a: _retensor(a, _set(Q_A, torch.zeros(RANK, 576, dtype=torch.int8))),
        f"tensor {Q_A} has dtype int8; allowed: bfloat16, float16, float32",
    ),
    (
        "float64",
        lambda a: _retensor(a, _set(Q_A, torch.zeros(RANK, 576, dtype=torch.float64))),
        f"tensor {Q_A} has dtype float64",
    ),
]


@pytest.mark.parametrize(
    ("damage", "expected"), [(d, e) for _, d, e in REFUSALS], ids=[i for i, _, _ in REFUSALS]
)
def test_damaged_weights_are_refused(
    damage: Callable[[PeftAdapter], bytes],
    expected: str,
    smollm: PeftAdapter,
    specs: dict[str, BaseModelSpec],
) -> None:
    weights = damage(smollm)
    reason = _refusal(
        lambda: import_peft_files(smollm.config_json(), weights, base=specs[SMOLLM2], limits=LIMITS)
    )
    assert expected in reason


CONFIG_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("regex", {"target_modules": r".*\.(q_proj|v_proj)"}, "target_modules is the pattern"),
    ("all-linear", {"target_modules": "all-linear"}, "needs an explicit list of module names"),
    ("not lora", {"peft_type": "IA3"}, "peft_type is 'IA3'; Tailor imports only LoRA adapters"),
    ("dora", {"use_dora": True}, "DoRA (use_dora) is not supported"),
    ("bias", {"bias": "all"}, "bias is 'all'"),
    ("modules_to_save", {"modules_to_save": ["lm_head"]}, "modules_to_save"),
    (
        "lm_head",
        {"target_modules": [*TARGET_MODULES, "lm_head"]},
        f"target module 'lm_head' is not supported for {SMOLLM2} (llama)",
    ),
    (
        "missing module",
        {"target_modules": ["q_proj"]},
        "which target_modules ['q_proj'] does not list",
    ),
    ("rank", {"r": 4}, "down_proj.lora_A.weight has shape [8, 1536], expected [4, 1536]"),
    ("bad alpha", {"lora_alpha": "16"}, "lora_alpha must be a number"),
]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [(c, e) for _, c, e in CONFIG_REFUSALS],
    ids=[i for i, _, _ in CONFIG_REFUSALS],
)
def test_unsupported_peft_configs_are_refused(
    changes: dict[str, Any], expected: str, smollm: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    reason = _refusal(
        lambda: import_peft_files(
            smollm.config_json(**changes), smollm.weights, base=specs[SMOLLM2], limits=LIMITS
        )
    )
    assert expected in reason


def test_rank_over_the_cap_is_refused(smollm: PeftAdapter, specs: dict[str, BaseModelSpec]) -> None:
    limits = ValidationLimits(max_rank=4)
    reason = _refusal(lambda: import_peft_dir(smollm.directory, base=specs[SMOLLM2], limits=limits))
    assert reason == "rank 8 exceeds the limit of 4; retrain with r <= 4"


def test_a_file_over_the_size_cap_is_refused(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    limits = ValidationLimits(max_file_bytes=len(smollm.weights) - 1)
    spec = specs[SMOLLM2]
    over = f"is {len(smollm.weights)} bytes, over the limit of {len(smollm.weights) - 1} bytes"
    assert over in _refusal(lambda: import_peft_dir(smollm.directory, base=spec, limits=limits))
    assert over in _refusal(
        lambda: import_peft_files(smollm.config_json(), smollm.weights, base=spec, limits=limits)
    )


def test_an_adapter_for_the_other_base_model_is_refused(
    gemma: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    smollm_spec, gemma_spec = specs[SMOLLM2], specs[GEMMA]
    # A plain peft directory says nothing Tailor can trust about its base: the shapes do.
    reason = _refusal(lambda: import_peft_dir(gemma.directory, base=smollm_spec, limits=LIMITS))
    assert (
        "tensor base_model.model.model.layers.0.mlp.down_proj.lora_A.weight has shape "
        f"[8, 2048], expected [8, 1536] for {SMOLLM2}"
    ) in reason
    # Tailor's file says which base it was made for.
    weights = import_peft_dir(gemma.directory, base=gemma_spec, limits=LIMITS)
    data = serialize(weights, base_model_sha256=gemma_spec.sha256)
    reason = _refusal(lambda: deserialize(data, base=smollm_spec, limits=LIMITS))
    assert reason.startswith(f"this adapter was made for base model '{GEMMA}', not '{SMOLLM2}'")
    other_weights = serialize(weights, base_model_sha256="0" * 64)
    reason = _refusal(lambda: deserialize(other_weights, base=gemma_spec, limits=LIMITS))
    assert (
        "base_model_sha256 '000" in reason
        and "does not match the weights of gemma-3-270m" in reason
    )


def test_a_plain_safetensors_file_is_not_a_tailor_adapter_file(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    reason = _refusal(lambda: deserialize(smollm.weights, base=specs[SMOLLM2], limits=LIMITS))
    assert "not a Tailor adapter file (format 'pt'" in reason


def test_validate_safetensors_takes_metadata_from_the_caller(
    smollm: PeftAdapter, specs: dict[str, BaseModelSpec]
) -> None:
    from adapters.validation import AdapterMetadata

    expected = AdapterMetadata(rank=RANK, alpha=ALPHA, target_modules=TARGET_MODULES)
    weights = validate_safetensors(
        smollm.weights, base=specs[SMOLLM2], limits=LIMITS, expected=expected
    )
    assert weights.rank == RANK and len(weights.tensors) == 30 * 14

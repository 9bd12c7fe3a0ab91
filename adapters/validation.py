"""Validating an untrusted adapter before anything loads it.

Every adapter that enters Tailor, from its own file format or from a PEFT
directory or upload, passes through ``validate_containers``. The checks run
cheapest and safest first, so that a hostile or broken file is refused before
it costs memory or reaches a parser we do not control:

1. size cap, before anything else is read;
2. the container, parsed by hand from the raw bytes (the header by
   ``models.safetensors_header``, the one reader): pickles (``torch.save``
   zip archives, raw pickles) and anything without a sane safetensors header
   are refused without being unpickled; the header must be a JSON object whose
   tensors tile the data region exactly;
3. what the adapter claims (its metadata): made for this base model, rank and
   gate size within the limits, target modules this architecture has;
4. every tensor, still from the header alone: name, layer, module, dtype and
   shape against the base model's real shapes; A/B pairs complete;
5. only then the ``safetensors`` library reads the values (never
   ``torch.load``), cross-checked against the header, and every value must be
   finite;
6. finite is not enough: weights must also be of a size training produces
   (``check_magnitudes``), since e.g. all-1e38 weights are finite yet turn every
   logit into infinity or NaN.

The magnitude limits, and why they are what they are. Validation knows the
base model's shapes (from ``config.json``) but not its weights, so the update
is bounded in absolute terms, not relative to the base weight it is added to:

- every stored value, and every ``lora_B`` value times ``alpha / rank`` (what
  serving multiplies), is at most ``MAX_WEIGHT_ABS`` = 1e4 in magnitude.
  Trained LoRA values measured stay below 0.25, the test fixtures' below 5
  (a random gate); at 1e4 a product of two values, summed over any rank and
  hidden size, stays far inside float32's and bfloat16's range (3.4e38);
- the update ``delta W = (alpha / rank) * B @ A`` of each wrapped module has an
  RMS per element, ``||delta W||_F / sqrt(out_features * in_features)``, of at
  most ``MAX_UPDATE_RMS`` = 1.0. ``||B @ A||_F`` is computed exactly from the
  small rank x rank products: ``||B A||_F^2 = sum((B^T B) * (A A^T))``. Base
  weights have an RMS of 0.01-0.4 (Gemma 3 270M: 0.012-0.04; SmolLM2 135M:
  0.047-0.40). Measured updates: real fine-tunes 5e-4-2e-3 (0.036 at ten
  times the default learning rate), the largest random fixture in the tests
  0.27 (noise that wrecks the model on purpose), a run diverged at a hundred
  times the default learning rate 2.5. An update of RMS 1 would outweigh
  every base weight measured, which no fine-tune that still writes text makes.

Returned tensors are float32, contiguous, on the CPU, and own their memory:
float16 and bfloat16 convert exactly; float64 (only if a deployment allows
it) is rounded, and a value that overflows float32 is refused as infinite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from adapters.base_shapes import BaseModelShapes, ModuleShape
from adapters.errors import InvalidAdapter
from adapters.lora_weights import TARGET_MODULES, TENSOR_NAME, LoraWeights, tensor_name
from models.safetensors_header import NotSafetensors, parse_header

if TYPE_CHECKING:
    from pathlib import Path

    from models.store import PreparedModel

MiB = 1 << 20

# safetensors dtype code -> (torch dtype name, bytes per element). Codes not
# listed here are refused as unknown before their size can be computed.
_DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
}

# The magnitude limits of ``check_magnitudes``; the module docstring says why.
MAX_WEIGHT_ABS = 1e4
MAX_UPDATE_RMS = 1.0

# LoRA weights are real numbers; these are the dtypes a deployment may allow.
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFETENSORS_ADVICE = (
    "save adapters with safetensors (peft: save_pretrained(..., safe_serialization=True))"
)


@dataclass(frozen=True)
class ValidationLimits:
    """What a deployment accepts; the defaults suit adapters of sub-10B models."""

    max_file_bytes: int = 64 * MiB
    max_rank: int = 64
    allowed_dtypes: frozenset[str] = frozenset({"float32", "float16", "bfloat16"})
    max_gate_experts: int = 8
    """Rows of a CoMiGS gate: the generalists it scores plus the expert itself."""
    max_weight_abs: float = MAX_WEIGHT_ABS
    """The largest magnitude of any value, and of any ``lora_B`` value times alpha/rank."""
    max_update_rms: float = MAX_UPDATE_RMS
    """The largest RMS per element of a module's update ``(alpha/rank) * B @ A``."""

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_rank", "max_gate_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ValidationLimits.{name} must be a positive integer: {value!r}")
        for name in ("max_weight_abs", "max_update_rms"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"ValidationLimits.{name} must be a positive number: {value!r}")
        if not isinstance(self.allowed_dtypes, frozenset) or not self.allowed_dtypes:
            raise ValueError("ValidationLimits.allowed_dtypes must be a non-empty frozenset")
        unknown = self.allowed_dtypes - FLOAT_DTYPES
        if unknown:
            raise ValueError(
                f"ValidationLimits.allowed_dtypes may hold only {sorted(FLOAT_DTYPES)}; "
                f"got {sorted(unknown)}"
            )


@dataclass(frozen=True)
class BaseModelSpec:
    """The base model an adapter must fit: its id, weights digest and shapes."""

    id: str
    sha256: str
    shapes: BaseModelShapes

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("BaseModelSpec.id must not be empty")
        if not _SHA256.match(self.sha256):
            raise ValueError(
                f"BaseModelSpec.sha256 must be 64 lowercase hex digits: {self.sha256!r}"
            )

    @classmethod
    def from_prepared(cls, model: PreparedModel) -> BaseModelSpec:
        """The spec of a model in the model store (reads its config.json only)."""
        return cls.from_model_dir(model.id, model.sha256, model.path)

    @classmethod
    def from_model_dir(cls, model_id: str, sha256: str, path: Path) -> BaseModelSpec:
        return cls(model_id, sha256, BaseModelShapes.from_model_dir(path))


@dataclass(frozen=True)
class AdapterMetadata:
    """What an adapter claims about itself, from Tailor's header or a PEFT config.

    Untrusted: ``validate_containers`` checks every field against the base
    model and the limits.
    """

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model_id: str | None = None
    """None when the source does not say (a plain PEFT directory)."""
    base_model_sha256: str | None = None
    gate_experts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; offsets are within the data region."""

    dtype: str
    """torch's name, e.g. ``float32``."""
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Container:
    """A safetensors buffer whose header passed the structural checks.

    Make one with ``read_container``. Its values are not read yet.
    """

    label: str
    """How messages name the file, e.g. ``adapter_model.safetensors``."""
    data: bytes = field(repr=False)
    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorEntry]


def read_container(data: bytes, *, limits: ValidationLimits, label: str = "adapter") -> Container:
    """Check the size and the safetensors structure of ``data``; read no values.

    Raises ``InvalidAdapter`` for a file over the size cap, a pickle or zip
    (never unpickled), a truncated file, or a header that is not valid UTF-8
    JSON describing tensors that tile the data region exactly.
    """
    if len(data) > limits.max_file_bytes:
        raise InvalidAdapter(
            f"{label} is {len(data)} bytes, over the limit of {limits.max_file_bytes} bytes"
        )
    try:
        parsed = parse_header(data, label=label, advice=_SAFETENSORS_ADVICE)
    except NotSafetensors as error:
        raise InvalidAdapter(str(error)) from None
    header = dict(parsed.entries)
    metadata = _parse_metadata(label, header.pop("__metadata__", None))
    tensors = {name: _parse_entry(label, name, raw) for name, raw in header.items()}
    _check_tiling(label, tensors, data_len=len(data) - parsed.data_start)
    return Container(
        label=label,
        data=data,
        metadata=MappingProxyType(metadata),
        tensors=MappingProxyType(tensors),
    )


def validate_safetensors(
    data: bytes, *, base: BaseModelSpec, limits: ValidationLimits, expected: AdapterMetadata
) -> LoraWeights:
    """Validate one safetensors file of LoRA tensors against ``expected`` and the base."""
    return validate_containers(
        [read_container(data, limits=limits)], base=base, limits=limits, expected=expected
    )


def validate_containers(
    containers: Sequence[Container],
    *,
    base: BaseModelSpec,
    limits: ValidationLimits,
    expected: AdapterMetadata,
) -> LoraWeights:
    """Validate an adapter split over one or more files (e.g. PEFT weights + gate).

    Raises ``InvalidAdapter`` whose reason names the field or tensor at fault.
    """
    _check_metadata(expected, base, limits)
    entries: dict[str, TensorEntry] = {}
    for container in containers:
        for name, entry in container.tensors.items():
            if name in entries:
                raise InvalidAdapter(f"tensor {name} appears in more than one file")
            entries[name] = entry
    if not entries:
        raise InvalidAdapter("the adapter holds no LoRA tensors")
    slots = {
        name: _check_entry(name, entry, expected, base, limits) for name, entry in entries.items()
    }
    _check_pairs(slots, expected)
    tensors: dict[str, torch.Tensor] = {}
    for container in containers:
        tensors.update(_load_values(container))
    weights = LoraWeights(
        base_model_id=base.id,
        rank=expected.rank,
        alpha=float(expected.alpha),
        target_modules=tuple(m for m in TARGET_MODULES if m in expected.target_modules),
        tensors=tensors,
        gate_experts=expected.gate_experts,
    )
    check_magnitudes(weights, limits)
    return weights


def check_magnitudes(weights: LoraWeights, limits: ValidationLimits) -> None:
    """Refuse weights that are finite but far larger than training produces.

    Checks every value against ``limits.max_weight_abs`` and every wrapped
    module's update ``(alpha/rank) * B @ A`` against ``limits.max_update_rms``
    (the module docstring explains both). Also refuses NaN and infinity, so
    it suits weights that never were a file, e.g. a fine-tune's result.
    Raises ``InvalidAdapter`` naming the tensor or module, its measured value
    and the limit. Costs a few rank x rank products per module.
    """
    limit = limits.max_weight_abs
    peaks = {name: _peak(weights.tensors[name]) for name in sorted(weights.tensors)}
    for name, peak in peaks.items():
        if not peak <= limit:  # also true for NaN
            raise InvalidAdapter(f"tensor {name}: {_too_large(peak, limit)}")
    scale = weights.scale
    for name in sorted(weights.tensors):
        match = TENSOR_NAME.match(name)
        if match is None or match["kind"] != "lora_A":
            continue
        b_name = tensor_name(int(match["layer"]), match["module"], "lora_B")
        if b_name not in weights.tensors:
            continue  # a missing half is _check_pairs' refusal, not this one's
        module = name.removeprefix("base_model.model.model.").removesuffix(".lora_A.weight")
        a, b = weights.tensors[name], weights.tensors[b_name]
        scaled_peak = scale * peaks[b_name]
        if not scaled_peak <= limit:
            raise InvalidAdapter(
                f"tensor {b_name}: times alpha/rank ({scale:.4g}), {_too_large(scaled_peak, limit)}"
            )
        rms = scale * _product_frobenius(b, a) / math.sqrt(a.shape[1] * b.shape[0])
        if not rms <= limits.max_update_rms:
            raise InvalidAdapter(
                f"module {module}: its update (alpha/rank) * B @ A has an RMS of {rms:.4g} "
                f"per element, over the limit of {limits.max_update_rms:.4g}; a fine-tune's "
                "update is far smaller than the base weights it adds to (typically RMS "
                "0.01-0.4), so these weights are corrupt or their training diverged"
            )


def _peak(tensor: torch.Tensor) -> float:
    """The largest magnitude in ``tensor``; NaN if it holds a NaN (aminmax propagates it)."""
    if tensor.numel() == 0:
        return 0.0
    # One pass, no copy: this runs on every load of every adapter.
    low, high = torch.aminmax(tensor.detach())
    return max(-float(low), float(high)) if not math.isnan(float(low)) else math.nan


def _too_large(peak: float, limit: float) -> str:
    if not math.isfinite(peak):
        return "holds NaN or infinite values"
    return (
        f"holds a value of magnitude {peak:.4g}, over the limit of {limit:.4g}; "
        "far beyond any trained adapter's weights"
    )


def _product_frobenius(b: torch.Tensor, a: torch.Tensor) -> float:
    """``||b @ a||_F`` exactly, without forming the out x in product.

    ``||B A||_F^2 = trace(A^T B^T B A) = sum((B^T B) * (A A^T))``: two rank x
    rank Gram matrices. In float64, which holds the squares of values up to
    ``MAX_WEIGHT_ABS`` summed over any model's sizes with room to spare.
    """
    a64, b64 = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    squared = float(((b64.T @ b64) * (a64 @ a64.T)).sum())
    # Rounding can leave a zero product a hair below zero.
    return math.sqrt(max(squared, 0.0))


def _parse_metadata(label: str, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidAdapter(f"{label}: __metadata__ must be an object of strings")
    return dict(raw)


def _parse_entry(label: str, name: str, raw: object) -> TensorEntry:
    where = f"{label}: tensor {name}"
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise InvalidAdapter(f"{where}: header entry must have exactly dtype, shape, data_offsets")
    code, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(code, str) or code not in _DTYPES:
        raise InvalidAdapter(f"{where}: unknown dtype {code!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidAdapter(f"{where}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidAdapter(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end")
    dtype, itemsize = _DTYPES[code]
    needed = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != needed:
        raise InvalidAdapter(
            f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes, but dtype {dtype} "
            f"and shape {shape} need {needed}"
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_tiling(label: str, tensors: Mapping[str, TensorEntry], *, data_len: int) -> None:
    ordered = sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end))
    for name, entry in ordered:
        if entry.end > data_len:
            raise InvalidAdapter(
                f"{label} is truncated: tensor {name} ends at byte {entry.end} of the data "
                f"region, which has only {data_len} bytes"
            )
    position, previous = 0, None
    for name, entry in ordered:
        if entry.begin < position:
            raise InvalidAdapter(f"{label}: tensors {previous} and {name} overlap (data_offsets)")
        if entry.begin > position:
            raise InvalidAdapter(
                f"{label}: {entry.begin - position} unused bytes before tensor {name} "
                "(data_offsets leave a gap)"
            )
        position, previous = entry.end, name
    if position != data_len:
        raise InvalidAdapter(
            f"{label}: {data_len - position} bytes of trailing data after the last tensor"
        )


def _check_metadata(
    expected: AdapterMetadata, base: BaseModelSpec, limits: ValidationLimits
) -> None:
    if expected.base_model_id is not None and expected.base_model_id != base.id:
        raise InvalidAdapter(
            f"this adapter was made for base model {expected.base_model_id!r}, not {base.id!r}; "
            f"use it with {expected.base_model_id!r} or train one for {base.id!r}"
        )
    if expected.base_model_sha256 is not None and expected.base_model_sha256 != base.sha256:
        raise InvalidAdapter(
            f"base_model_sha256 {expected.base_model_sha256!r} does not match the weights of "
            f"{base.id} ({base.sha256}): the adapter was trained on other weights of that name"
        )
    rank = expected.rank
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidAdapter(f"rank must be a positive integer, got {rank!r}")
    if rank > limits.max_rank:
        raise InvalidAdapter(
            f"rank {rank} exceeds the limit of {limits.max_rank}; "
            f"retrain with r <= {limits.max_rank}"
        )
    alpha = expected.alpha
    if (
        not isinstance(alpha, int | float)
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise InvalidAdapter(f"alpha must be a positive finite number, got {alpha!r}")
    allowed = base.shapes.target_modules
    if not expected.target_modules:
        raise InvalidAdapter("target_modules is empty")
    if len(set(expected.target_modules)) != len(expected.target_modules):
        raise InvalidAdapter(
            f"target_modules lists a module twice: {list(expected.target_modules)}"
        )
    for module in expected.target_modules:
        if module not in allowed:
            raise InvalidAdapter(
                f"target module {module!r} is not supported for {base.id} "
                f"({base.shapes.model_type}); LoRA may wrap only: {', '.join(allowed)}"
            )
    gates = expected.gate_experts
    if any(not isinstance(g, str) or not g for g in gates) or len(set(gates)) != len(gates):
        raise InvalidAdapter("gate_experts must be distinct, non-empty adapter ids")
    if len(gates) + 1 > limits.max_gate_experts:
        raise InvalidAdapter(
            f"the gate scores {len(gates) + 1} experts ({len(gates)} generalists and the expert "
            f"itself), over the limit of {limits.max_gate_experts}"
        )


def _check_entry(
    name: str,
    entry: TensorEntry,
    expected: AdapterMetadata,
    base: BaseModelSpec,
    limits: ValidationLimits,
) -> tuple[int, str, str]:
    """Check one tensor from its header entry; return its (layer, module, kind)."""
    match = TENSOR_NAME.match(name)
    if match is None:
        raise InvalidAdapter(
            f"tensor {name} is not a LoRA weight of a decoder layer; Tailor accepts only "
            "base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.<lora_A|lora_B>.weight "
            f"with module one of {', '.join(base.shapes.target_modules)} "
            "(no lm_head, embed_tokens, biases or modules_to_save)"
        )
    # int() refuses over 4300 digits with ValueError; no model has a billion layers.
    if len(match["layer"]) > 9:
        raise InvalidAdapter(f"tensor {name} has a layer index beyond any model")
    layer, module, kind = int(match["layer"]), match["module"], match["kind"]
    if module not in base.shapes.modules:
        raise InvalidAdapter(
            f"tensor {name} wraps {module!r}, which is not supported for {base.id}; "
            f"LoRA may wrap only: {', '.join(base.shapes.target_modules)}"
        )
    if tensor_name(layer, module, kind) != name:
        raise InvalidAdapter(
            f"tensor {name} is misnamed; expected {tensor_name(layer, module, kind)}"
        )
    if layer >= base.shapes.num_layers:
        raise InvalidAdapter(
            f"tensor {name} is for layer {layer}, but {base.id} has "
            f"{base.shapes.num_layers} layers (0..{base.shapes.num_layers - 1})"
        )
    if module not in expected.target_modules:
        raise InvalidAdapter(
            f"tensor {name} wraps {module}, which target_modules "
            f"{list(expected.target_modules)} does not list"
        )
    if entry.dtype not in limits.allowed_dtypes:
        raise InvalidAdapter(
            f"tensor {name} has dtype {entry.dtype}; allowed: "
            f"{', '.join(sorted(limits.allowed_dtypes))}"
        )
    shape = base.shapes.modules[module]
    rank = expected.rank
    want = {
        "lora_A": (rank, shape.in_features),
        "lora_B": (shape.out_features, rank),
        "tailor_gate": (len(expected.gate_experts) + 1, shape.in_features),
    }[kind]
    if entry.shape != want:
        raise InvalidAdapter(
            f"tensor {name} has shape {list(entry.shape)}, expected {list(want)} for {base.id} "
            f"({_shape_hint(kind, module, expected, shape)})"
        )
    return layer, module, kind


def _shape_hint(kind: str, module: str, expected: AdapterMetadata, shape: ModuleShape) -> str:
    if kind == "lora_A":
        return f"[rank, in_features]: rank {expected.rank}, {module} takes {shape.in_features}"
    if kind == "lora_B":
        return f"[out_features, rank]: {module} gives {shape.out_features}, rank {expected.rank}"
    return (
        f"one row per gate expert: the {len(expected.gate_experts)} in gate_experts, "
        "then the expert itself"
    )


def _check_pairs(slots: Mapping[str, tuple[int, str, str]], expected: AdapterMetadata) -> None:
    kinds: dict[tuple[int, str], set[str]] = {}
    for layer, module, kind in slots.values():
        kinds.setdefault((layer, module), set()).add(kind)
    gated = bool(expected.gate_experts) or any(k == "tailor_gate" for _, _, k in slots.values())
    for (layer, module), present in sorted(kinds.items()):
        for kind in ("lora_A", "lora_B"):
            if kind not in present:
                others = " and ".join(sorted(present))
                raise InvalidAdapter(
                    f"tensor {tensor_name(layer, module, kind)} is missing ({others} of that "
                    "module is present): every wrapped module needs both lora_A and lora_B"
                )
        if gated and "tailor_gate" not in present:
            raise InvalidAdapter(
                f"tensor {tensor_name(layer, module, 'tailor_gate')} is missing: an adapter "
                "with a gate needs one for every wrapped module"
            )
    covered = {module for _, module in kinds}
    for module in expected.target_modules:
        if module not in covered:
            raise InvalidAdapter(
                f"target_modules lists {module} but the adapter has no tensors for it"
            )


def _load_values(container: Container) -> dict[str, torch.Tensor]:
    try:
        loaded = load_safetensors(container.data)
    except SafetensorError as error:
        raise InvalidAdapter(
            f"{container.label} is not a valid safetensors file: {error}"
        ) from None
    if set(loaded) != set(container.tensors):
        raise InvalidAdapter(f"{container.label}: tensors differ from what its header lists")
    result = {}
    for name in sorted(loaded):
        source = loaded[name]
        entry = container.tensors[name]
        if tuple(source.shape) != entry.shape or str(source.dtype) != f"torch.{entry.dtype}":
            raise InvalidAdapter(f"{container.label}: tensor {name} differs from its header entry")
        # A copy: the result must own its memory, not view the caller's bytes.
        tensor = source.to(dtype=torch.float32, copy=True).contiguous()
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nan = int(torch.isnan(tensor).sum())
            inf = tensor.numel() - int(finite.sum()) - nan
            overflow = (
                " (float64 values beyond float32's range)" if entry.dtype == "float64" else ""
            )
            raise InvalidAdapter(
                f"tensor {name} holds {nan} NaN and {inf} infinite values{overflow}"
            )
        result[name] = tensor
    return result

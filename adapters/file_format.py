"""Tailor's adapter file: one safetensors file, self-describing.

The tensors keep peft's names (see ``lora_weights``), gate tensors included,
and the safetensors header's string metadata says what the adapter is:

    format              "tailor-lora/1"
    base_model_id       e.g. "smollm2-135m-instruct"
    base_model_sha256   of the base weights the adapter was trained on
    rank                decimal integer, e.g. "8"
    alpha               decimal float, exact (Python repr), e.g. "16.0"
    target_modules      JSON list, e.g. ["q_proj", "v_proj"]
    gate_experts        JSON list of generalist adapter ids, [] without a gate

``deserialize`` always validates: there is no other way to turn bytes back
into ``LoraWeights``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch
from safetensors.torch import save as save_safetensors

from adapters.errors import InvalidAdapter
from adapters.lora_weights import LoraWeights
from adapters.validation import (
    AdapterMetadata,
    BaseModelSpec,
    ValidationLimits,
    read_container,
    validate_containers,
)

FORMAT = "tailor-lora/1"
_FORMAT_FAMILY = "tailor-lora/"

_REQUIRED_KEYS = ("base_model_id", "rank", "alpha", "target_modules")
_DECIMAL = re.compile(r"^[1-9][0-9]{0,8}$")


def serialize(weights: LoraWeights, *, base_model_sha256: str) -> bytes:
    """The adapter file for ``weights``, tensors stored as they are (float32 once validated)."""
    if not base_model_sha256:
        raise ValueError("base_model_sha256 must not be empty")
    metadata = {
        "format": FORMAT,
        "base_model_id": weights.base_model_id,
        "base_model_sha256": base_model_sha256,
        "rank": str(weights.rank),
        "alpha": repr(float(weights.alpha)),
        "target_modules": json.dumps(list(weights.target_modules)),
        "gate_experts": json.dumps(list(weights.gate_experts)),
    }
    tensors: dict[str, torch.Tensor] = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in weights.tensors.items()
    }
    return save_safetensors(tensors, metadata=metadata)


def deserialize(data: bytes, *, base: BaseModelSpec, limits: ValidationLimits) -> LoraWeights:
    """Validate an adapter file for ``base`` and return its weights (float32, CPU).

    Raises ``InvalidAdapter`` with a reason for the user when the file is not
    a valid Tailor adapter for ``base`` within ``limits``.
    """
    container = read_container(data, limits=limits, label="adapter file")
    expected = read_metadata(container.metadata)
    return validate_containers([container], base=base, limits=limits, expected=expected)


def read_metadata(metadata: Mapping[str, str]) -> AdapterMetadata:
    """Parse Tailor's header metadata; the values are checked later, against the base."""
    file_format = metadata.get("format")
    if file_format != FORMAT:
        if file_format is not None and file_format.startswith(_FORMAT_FAMILY):
            raise InvalidAdapter(
                f"adapter file format {file_format!r} is not supported by this Tailor "
                f"(it reads {FORMAT!r}); upgrade Tailor"
            )
        raise InvalidAdapter(
            f"not a Tailor adapter file (format {file_format!r}, expected {FORMAT!r}); "
            "a PEFT adapter is uploaded as adapter_config.json + adapter_model.safetensors"
        )
    for key in _REQUIRED_KEYS:
        if key not in metadata:
            raise InvalidAdapter(f"adapter file metadata lacks {key}")
    rank_text = metadata["rank"]
    if not _DECIMAL.match(rank_text):
        raise InvalidAdapter(f"metadata rank must be a positive decimal integer, got {rank_text!r}")
    try:
        alpha = float(metadata["alpha"])
    except ValueError:
        raise InvalidAdapter(f"metadata alpha is not a number: {metadata['alpha']!r}") from None
    return AdapterMetadata(
        rank=int(rank_text),
        alpha=alpha,
        target_modules=_string_list(metadata, "target_modules"),
        base_model_id=metadata["base_model_id"],
        base_model_sha256=metadata.get("base_model_sha256"),
        gate_experts=_string_list(metadata, "gate_experts") if "gate_experts" in metadata else (),
    )


def _string_list(metadata: Mapping[str, str], key: str) -> tuple[str, ...]:
    try:
        value = json.loads(metadata[key])
    except (ValueError, RecursionError):
        raise InvalidAdapter(f"metadata {key} is not JSON: {metadata[key]!r}") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidAdapter(f"metadata {key} must be a JSON list of strings")
    return tuple(value)

"""PEFT adapter directories in and out of Tailor.

A PEFT LoRA directory is ``adapter_config.json`` (a ``LoraConfig``) plus
``adapter_model.safetensors``. Tailor's tensor names are peft's, so nothing
is renamed either way. peft has no place for a CoMiGS gate (it would reject
unknown keys), so a gate travels beside the adapter in
``tailor_gate.safetensors``, whose metadata lists the gate's generalists;
PEFT ignores that file.

Importing validates everything (see ``validation``); ``adapter_model.bin``
is a pickle and is never opened.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from adapters.errors import InvalidAdapter
from adapters.lora_weights import LoraWeights
from adapters.validation import (
    AdapterMetadata,
    BaseModelSpec,
    Container,
    ValidationLimits,
    read_container,
    validate_containers,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
GATE_FILE = "tailor_gate.safetensors"
GATE_FORMAT = "tailor-gate/1"

_GATE_SUFFIX = ".tailor_gate.weight"
# A LoraConfig is a couple of KB of JSON.
_MAX_CONFIG_BYTES = 1 << 20

# LoraConfig options that change what the adapter computes in ways
# ``LoraWeights`` cannot express; an adapter using any of them is refused
# rather than served wrong. Options that only affect training or
# initialisation (dropout, init_lora_weights, loftq/eva/corda, ...) and
# which layers were wrapped (the tensors say that) are ignored.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (use_dora)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "lora_bias": "LoRA bias terms (lora_bias)",
    "fan_in_fan_out": "transposed weights (fan_in_fan_out)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "rank_pattern": "per-module ranks (rank_pattern)",
    "alpha_pattern": "per-module alphas (alpha_pattern)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
    "target_parameters": "LoRA on parameters (target_parameters)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "megatron_config": "Megatron layers (megatron_config)",
}


def import_peft_dir(path: Path, *, base: BaseModelSpec, limits: ValidationLimits) -> LoraWeights:
    """Validate and load a PEFT LoRA directory saved with ``safe_serialization=True``.

    Reads ``tailor_gate.safetensors`` too when present. Raises
    ``InvalidAdapter`` with a reason for the user.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise InvalidAdapter(f"{directory} is not a directory")
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        if (directory / PICKLED_WEIGHTS).exists():
            raise InvalidAdapter(
                f"the directory holds {PICKLED_WEIGHTS}, a pickle file; pickle files are not "
                "accepted; save with safe_serialization=True"
            )
        raise InvalidAdapter(f"the directory has no {ADAPTER_WEIGHTS}")
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise InvalidAdapter(f"the directory has no {ADAPTER_CONFIG}")
    # Weights first: their size cap applies before anything else is read.
    weights = _read_capped(weights_path, limits.max_file_bytes)
    gate_path = directory / GATE_FILE
    gate = _read_capped(gate_path, limits.max_file_bytes) if gate_path.exists() else None
    config_json = _read_capped(config_path, _MAX_CONFIG_BYTES)
    return import_peft_files(config_json, weights, base=base, limits=limits, gate=gate)


def import_peft_files(
    config_json: bytes,
    weights: bytes,
    *,
    base: BaseModelSpec,
    limits: ValidationLimits,
    gate: bytes | None = None,
) -> LoraWeights:
    """``import_peft_dir`` for files already in memory, e.g. a multipart upload.

    ``config_json`` is ``adapter_config.json``, ``weights`` the bytes of
    ``adapter_model.safetensors`` and ``gate`` those of
    ``tailor_gate.safetensors`` if any.
    """
    containers = [read_container(weights, limits=limits, label=ADAPTER_WEIGHTS)]
    gate_experts: tuple[str, ...] = ()
    if gate is not None:
        gate_container = read_container(gate, limits=limits, label=GATE_FILE)
        gate_experts = _gate_experts(gate_container)
        containers.append(gate_container)
    for name in containers[0].tensors:
        if name.endswith(_GATE_SUFFIX):
            raise InvalidAdapter(
                f"{ADAPTER_WEIGHTS} holds gate tensor {name}; in a PEFT directory gate "
                f"tensors belong in {GATE_FILE}"
            )
    expected = dataclasses.replace(read_peft_config(config_json), gate_experts=gate_experts)
    return validate_containers(containers, base=base, limits=limits, expected=expected)


def read_peft_config(config_json: bytes) -> AdapterMetadata:
    """What a PEFT ``adapter_config.json`` says, refusing what Tailor cannot serve.

    ``base_model_name_or_path`` is a hub name or a path on the trainer's
    machine, not a Tailor model id, so it is not compared: the tensor shapes
    decide whether the adapter fits the base model. rsLoRA (scale
    ``alpha / sqrt(r)``) is folded into alpha: ``alpha * sqrt(r)``, so that
    ``alpha / rank`` gives the same scale.
    """
    config = _config_object(config_json)
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}: peft_type is {peft_type!r}; Tailor imports only LoRA adapters "
            '(peft_type "LORA")'
        )
    for option, feature in _UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise InvalidAdapter(f"{ADAPTER_CONFIG}: {feature} is not supported by Tailor")
    bias = config.get("bias", "none")
    if bias != "none":
        raise InvalidAdapter(
            f'{ADAPTER_CONFIG}: bias is {bias!r}; Tailor supports only bias="none" '
            "(the adapter would carry trained bias vectors)"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: r must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r}")
    use_rslora = config.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise InvalidAdapter(f"{ADAPTER_CONFIG}: use_rslora must be true or false")
    return AdapterMetadata(
        rank=rank,
        alpha=float(alpha) * math.sqrt(rank) if use_rslora else float(alpha),
        target_modules=_target_modules(config.get("target_modules")),
    )


def export_peft_dir(weights: LoraWeights, path: Path) -> None:
    """Write ``weights`` as a PEFT LoRA directory that ``PeftModel.from_pretrained`` loads.

    The gate, if any, goes to ``tailor_gate.safetensors``; a stale one from an
    earlier export is removed. Each file is replaced atomically.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    lora: dict[str, torch.Tensor] = {}
    gates: dict[str, torch.Tensor] = {}
    for name, tensor in weights.tensors.items():
        target = gates if name.endswith(_GATE_SUFFIX) else lora
        target[name] = tensor.detach().to("cpu").contiguous()
    alpha = weights.alpha
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": weights.base_model_id,
        "r": weights.rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": list(weights.target_modules),
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    _write_atomic(directory / ADAPTER_WEIGHTS, save_safetensors(lora, metadata={"format": "pt"}))
    gate_path = directory / GATE_FILE
    if gates:
        metadata = {"format": GATE_FORMAT, "gate_experts": json.dumps(list(weights.gate_experts))}
        _write_atomic(gate_path, save_safetensors(gates, metadata=metadata))
    else:
        gate_path.unlink(missing_ok=True)
    _write_atomic(directory / ADAPTER_CONFIG, (json.dumps(config, indent=2) + "\n").encode())


def _config_object(config_json: bytes) -> dict[str, Any]:
    if len(config_json) > _MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{ADAPTER_CONFIG} is over {_MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(config_json.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise InvalidAdapter(f"{ADAPTER_CONFIG} is not valid UTF-8 JSON ({error})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{ADAPTER_CONFIG} is not a JSON object")
    return config


def _target_modules(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        # peft reads a string as a regular expression over full module paths
        # (or "all-linear"); which modules it matched depends on the model it
        # was trained on, so the list must be explicit.
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}: target_modules is the pattern {value!r}; Tailor needs an explicit "
            'list of module names, e.g. LoraConfig(target_modules=["q_proj", "v_proj"])'
        )
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}: target_modules must be a non-empty list of module names"
        )
    return tuple(value)


def _gate_experts(container: Container) -> tuple[str, ...]:
    if container.metadata.get("format") != GATE_FORMAT:
        raise InvalidAdapter(f"{GATE_FILE}: metadata format must be {GATE_FORMAT!r}")
    try:
        experts = json.loads(container.metadata.get("gate_experts", ""))
    except (ValueError, RecursionError):
        raise InvalidAdapter(f"{GATE_FILE}: metadata gate_experts is not JSON") from None
    if not isinstance(experts, list) or not all(isinstance(e, str) for e in experts):
        raise InvalidAdapter(f"{GATE_FILE}: metadata gate_experts must be a JSON list of ids")
    for name in container.tensors:
        if not name.endswith(_GATE_SUFFIX):
            raise InvalidAdapter(f"{GATE_FILE} may hold only gate tensors, not {name}")
    return tuple(experts)


def _read_capped(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise InvalidAdapter(f"{path.name} is {size} bytes, over the limit of {limit} bytes")
    with path.open("rb") as file:
        # The file may grow between stat and read; never hold more than the cap.
        data = file.read(limit + 1)
    if len(data) > limit:
        raise InvalidAdapter(f"{path.name} is over the limit of {limit} bytes")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

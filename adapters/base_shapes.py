"""The shapes of the linear layers LoRA may wrap, from a base model's config alone.

Validation must know, before any adapter tensor is read, what shape every
``lora_A``/``lora_B`` must have for a base model; loading the base weights to
find out would cost seconds and gigabytes, and ``config.json`` already says
it. Tests compare these derived shapes against the real safetensors headers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from adapters.lora_weights import TARGET_MODULES
from models.architectures import NESTED_TEXT_CONFIG, language_model_type

# A config.json is a few KB; anything far larger is not one.
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class ModuleShape:
    """``in_features`` and ``out_features`` of one projection (``weight`` is ``[out, in]``)."""

    in_features: int
    out_features: int


@dataclass(frozen=True)
class BaseModelShapes:
    """What an adapter for one base model must look like, layer by layer."""

    model_type: str
    """The language model's ``model_type``, e.g. ``llama`` or ``gemma3_text``."""
    architecture: str
    """``architectures[0]`` of the config, e.g. ``LlamaForCausalLM``; informational."""
    num_layers: int
    # Same for every layer in the supported families. Excluded from the hash
    # because a mapping is not hashable; equality still compares it.
    modules: Mapping[str, ModuleShape] = field(hash=False)

    @property
    def target_modules(self) -> tuple[str, ...]:
        """The module names an adapter may wrap, in ``TARGET_MODULES`` order."""
        return tuple(name for name in TARGET_MODULES if name in self.modules)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> BaseModelShapes:
        """Derive the shapes from a ``config.json`` dict.

        Raises ``ValueError`` naming the model type or field when the config
        is of an unsupported architecture or lacks a size.
        """
        # The supported families name and shape their projections like llama's; peft's
        # tensor names then match ``lora_weights.TENSOR_NAME`` when loaded as
        # ``*ForCausalLM``. Which families those are is models.architectures' decision.
        architecture = _architecture(config)
        model_type = language_model_type(config)
        nested_key = NESTED_TEXT_CONFIG.get(str(config.get("model_type")))
        if nested_key is not None:
            nested = config[nested_key]
            assert isinstance(nested, Mapping)  # language_model_type checked it
            config = nested
        hidden = _positive_int(config, "hidden_size")
        intermediate = _positive_int(config, "intermediate_size")
        heads = _positive_int(config, "num_attention_heads")
        # Absent means multi-head attention: as many KV heads as query heads.
        kv_heads = (
            _positive_int(config, "num_key_value_heads")
            if config.get("num_key_value_heads") is not None
            else heads
        )
        if config.get("head_dim") is not None:
            head_dim = _positive_int(config, "head_dim")
        else:
            if hidden % heads:
                raise ValueError(
                    f"hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                    "and the config gives no head_dim"
                )
            head_dim = hidden // heads
        modules = {
            "q_proj": ModuleShape(hidden, heads * head_dim),
            "k_proj": ModuleShape(hidden, kv_heads * head_dim),
            "v_proj": ModuleShape(hidden, kv_heads * head_dim),
            "o_proj": ModuleShape(heads * head_dim, hidden),
            "gate_proj": ModuleShape(hidden, intermediate),
            "up_proj": ModuleShape(hidden, intermediate),
            "down_proj": ModuleShape(intermediate, hidden),
        }
        return cls(
            model_type=str(model_type),
            architecture=architecture,
            num_layers=_positive_int(config, "num_hidden_layers"),
            modules=MappingProxyType(modules),
        )

    @classmethod
    def from_model_dir(cls, path: Path) -> BaseModelShapes:
        """Read ``path/config.json`` and derive the shapes; no weights are opened."""
        config_path = Path(path) / "config.json"
        with config_path.open("rb") as file:
            raw = file.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            raise ValueError(f"{config_path} is larger than {_MAX_CONFIG_BYTES} bytes")
        config = json.loads(raw)
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} does not hold a JSON object")
        return cls.from_config(config)


def _architecture(config: Mapping[str, object]) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return ""


def _positive_int(config: Mapping[str, object], key: str) -> int:
    value = config.get(key)
    # bool is an int subclass; a config saying `true` for a size is broken.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"base model config field {key} must be a positive integer, got {value!r}")
    return value

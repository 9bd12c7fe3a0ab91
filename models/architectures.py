"""Which base model architectures Tailor serves, trains and accepts adapters for.

One list, read by everyone who must agree on it: adapter validation
(``adapters.base_shapes``, which derives the LoRA shapes from a config), the model
store when an operator adds a model of their own (``models.store.add``), and the
tests that build a tiny model of each family and run it through the engine and the
multi-LoRA layers (``tests/test_model_add.py``). A family belongs here only once that
test runs it: its decoder layers name and shape their projections like llama's
(q/k/v/o + gate/up/down), ``AutoModelForCausalLM`` loads it from a plain
safetensors checkpoint, and the engine's own attention masks (full, or one per layer
type for sliding-window layers) drive it.

It lives in ``models`` (below ``adapters``) because the model store must check a
model before anything above it is involved. Nothing here imports torch or
transformers: a config is a JSON object.
"""

from __future__ import annotations

from collections.abc import Mapping

# ``model_type`` of a language model's config.json.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

# Multimodal wrappers whose language model's config is nested under this key: an
# adapter for the language model of such a checkpoint is validated against it. The
# model store does not take such a checkpoint itself (its weights hold a vision
# tower that AutoModelForCausalLM would not load as a text model).
NESTED_TEXT_CONFIG = {"gemma3": "text_config"}

# GGUF ``general.architecture`` values whose files transformers dequantises into one of
# the families above (GGUF calls Gemma 3 ``gemma3`` and many Mistral files ``llama``).
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


class UnsupportedArchitecture(ValueError):
    """The config is of a family Tailor does not serve; the message names it."""


def language_model_type(config: Mapping[str, object]) -> str:
    """The supported ``model_type`` of a config (a nested text config's, for a multimodal
    wrapper); ``UnsupportedArchitecture`` naming what it is otherwise."""
    outer_type = config.get("model_type")
    nested_key = NESTED_TEXT_CONFIG.get(str(outer_type))
    model_type = outer_type
    if nested_key is not None:
        text_config = config.get(nested_key)
        if not isinstance(text_config, Mapping):
            raise UnsupportedArchitecture(f"{outer_type} config has no {nested_key} object")
        # A nested text config may omit its own model_type.
        model_type = text_config.get("model_type", f"{outer_type}_text")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"unsupported base model architecture {model_type!r}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return str(model_type)

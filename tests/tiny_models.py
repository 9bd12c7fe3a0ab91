"""Tiny random models of every family Tailor serves, as a Hugging Face directory, for tests.

Each is built from the family's real config class of transformers with tiny sizes (two
layers, 32 wide) and random weights, with a small byte-level BPE tokenizer trained here
on a few sentences (no hub, no model store) and a chat template, and saved as
``save_pretrained`` writes it: safetensors (transformers 5 writes nothing else). They
answer gibberish; what they show is that a family loads, runs through the engine and
the multi-LoRA layers, and answers a chat through the app.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

SPECIAL_TOKENS = ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Name a colour. Blue is a colour, and so is red.",
    "The quick brown fox jumps over the lazy dog.",
    "Say hello in Spanish. Hola!",
]
# Sizes every family shares: small enough to build, add and answer in about a second.
_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 512,
}
# The sliding-window families get a window shorter than a chat, so the engine's
# per-layer-type masks are exercised.
_WINDOW: dict[str, Any] = {
    "sliding_window": 16,
    "layer_types": ["sliding_attention", "full_attention"],
}

FAMILIES: dict[str, Callable[..., PretrainedConfig]] = {
    "llama": lambda **ids: LlamaConfig(**_SIZES, **ids),
    "mistral": lambda **ids: MistralConfig(**_SIZES, **ids),
    "qwen2": lambda **ids: Qwen2Config(**_SIZES, **ids),
    "qwen3": lambda **ids: Qwen3Config(**_SIZES, **ids),
    "gemma": lambda **ids: GemmaConfig(**_SIZES, **ids),
    "gemma2": lambda **ids: Gemma2Config(**_SIZES, **_WINDOW, **ids),
    "gemma3_text": lambda **ids: Gemma3TextConfig(**_SIZES, **_WINDOW, **ids),
}
"""A tiny config of each supported ``model_type``, given the tokenizer's ids and size."""


def tiny_tokenizer(*, chat: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE of about 300 tokens; ``<|end|>`` ends a turn and the answer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, eos_token="<|end|>", pad_token="<|end|>"
    )
    fast.chat_template = CHAT_TEMPLATE if chat else None
    return fast


def build_tiny_model(model_type: str, directory: Path, *, seed: int = 0, chat: bool = True) -> Path:
    """A random model of ``model_type`` saved into ``directory``, which it returns."""
    tokenizer = tiny_tokenizer(chat=chat)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    config = FAMILIES[model_type](
        vocab_size=len(tokenizer), bos_token_id=end, eos_token_id=end, pad_token_id=end
    )
    torch.manual_seed(seed)
    model: Any = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    """A directory holding only ``config.json`` (for configs of families not served)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory

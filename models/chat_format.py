"""How a conversation becomes tokens, the same for serving and for training.

A model with a chat template gets its template; a base model (no template) a
plain transcript it can continue ("User: ...\\nAssistant:"). Training must see
exactly what serving will feed the model, or the expert learns a format it
is never asked in. So it is the model layer's, below both ``serving`` and
``finetune``, and imports nothing of either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]

ASSISTANT_CUE = "Assistant:"


def transcript(messages: Sequence[Message]) -> str:
    """The base-model form of ``messages``, ending with the assistant's cue."""
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + ASSISTANT_CUE


def prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """The tokens that ask the model for the next assistant turn."""
    if tokenizer.chat_template is not None:
        encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
        ids: list[int] = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)
    return list(tokenizer(transcript(messages))["input_ids"])

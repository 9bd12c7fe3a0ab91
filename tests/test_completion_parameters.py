"""Every field of an OpenAI completion request is honoured, without effect here, or refused.

The classification (serving/completions/parameters.py) alone; over HTTP with the
official client in tests/test_e2e_chat.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from serving.completions.parameters import (
    NOT_SUPPORTED,
    WITHOUT_EFFECT,
    UnsupportedParameter,
    check_parameters,
)
from serving.openai_schemas import ChatCompletionCreate, CompletionCreate

ASKING = {
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "functions": [{"name": "f"}],
    "function_call": "auto",
    "logit_bias": {"50256": -100},
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "high",
    "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
    "best_of": 3,
    "echo": True,
    "suffix": " and so on",
}
NOTHING_ASKED = {
    "tools": [],
    "tool_choice": "none",
    "logit_bias": {},
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "modalities": ["text"],
    "best_of": 1,
    "echo": False,
    "suffix": None,
}


def test_every_refused_field_has_a_value_that_asks_something() -> None:
    assert set(ASKING) == set(NOT_SUPPORTED)


@pytest.mark.parametrize("name", sorted(ASKING))
def test_a_field_that_asks_for_what_tailor_does_not_do_is_refused_by_name(name: str) -> None:
    body = ChatCompletionCreate.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], name: ASKING[name]}
    )
    with pytest.raises(UnsupportedParameter) as refused:
        check_parameters(body.model_extra or {})
    assert refused.value.name == name
    assert str(refused.value).startswith(f"{name!r} is not supported: ")


def test_fields_that_ask_for_nothing_or_change_nothing_are_accepted() -> None:
    extra: dict[str, Any] = {
        **NOTHING_ASKED,
        **dict.fromkeys(WITHOUT_EFFECT, "anything"),
        "stream_options": {"include_usage": True},
    }
    body = CompletionCreate.model_validate({"model": "auto", "prompt": "hi", **extra})
    assert body.model_extra == extra
    check_parameters(body.model_extra)


def test_an_unknown_field_is_refused_rather_than_ignored() -> None:
    body = ChatCompletionCreate.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temprature": 0}
    )
    with pytest.raises(UnsupportedParameter, match="unknown parameter 'temprature'"):
        check_parameters(body.model_extra or {})
    # The declared fields are not extra: Tailor's own included.
    declared = ChatCompletionCreate.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "lambda": 0.5}
    )
    assert declared.model_extra == {} and declared.cost_weight == 0.5

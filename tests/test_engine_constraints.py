"""Constrained decoding through the engine: JSON that follows its schema, whatever the model.

A tiny random model with SmolLM2's tokenizer: left free it writes noise, so any
output that parses and matches the schema is the grammar's doing. Over HTTP with
the official client and the real models in tests/test_e2e_chat.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from transformers import AutoTokenizer

from serving.engine import constraints
from serving.engine.config import EngineConfig
from serving.engine.constraints import ConstraintFailed, json_grammar
from serving.engine.engine import Engine
from serving.engine.errors import RequestFailed
from serving.engine.requests import Finished, GenerationRequest
from serving.engine.sampling import SamplingParams
from tests.server import prepared_model_store
from tests.test_engine_isolation import tiny_llama

SMOL = "smollm2-135m-instruct"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    tokenizer: Any = AutoTokenizer.from_pretrained(prepared_model_store() / SMOL)
    running = Engine(
        model_id=SMOL,
        model=tiny_llama(len(tokenizer)),
        tokenizer=tokenizer,
        eos_token_ids={tokenizer.eos_token_id},
        config=EngineConfig(context_length=512, max_batch=8),
    )
    running.start()
    yield running
    running.stop()


def request(name: str, grammar: str | None, temperature: float = 0.0) -> GenerationRequest:
    params = SamplingParams(max_tokens=80, temperature=temperature, seed=7, grammar=grammar)
    return GenerationRequest(name, (1, 2, 3, 4, 5, 6), params)


def test_rows_follow_their_schema_beside_free_rows_that_are_unchanged(engine: Engine) -> None:
    alone = engine.submit(request("free-alone", None)).wait(60)
    assert isinstance(alone, Finished)
    grammar = json_grammar(SCHEMA)
    handles = [
        engine.submit(request("greedy", grammar)),
        engine.submit(request("free", None)),
        engine.submit(request("sampled", grammar, temperature=1.0)),
        engine.submit(request("object", json_grammar(None), temperature=0.7)),
    ]
    greedy, free, sampled, anything = (h.wait(60) for h in handles)
    assert isinstance(free, Finished) and free.text == alone.text  # the neighbours' masks
    for result in (greedy, sampled):
        assert isinstance(result, Finished) and result.reason == "stop", result
        value = json.loads(result.text)
        assert set(value) == {"name", "age", "pet", "tags"}, value
        assert isinstance(value["name"], str) and len(value["name"]) <= 6
        assert isinstance(value["age"], int) and 0 <= value["age"] <= 120
        assert value["pet"] in ("cat", "dog", "none")
        assert len(value["tags"]) <= 3 and all(isinstance(t, bool) for t in value["tags"])
    # Any object: it may run to max_tokens (nothing bounds it), but it is JSON so far.
    assert isinstance(anything, Finished) and anything.text.startswith("{")
    if anything.reason == "stop":
        assert isinstance(json.loads(anything.text), dict)


def test_a_grammar_that_fails_fails_only_its_row(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: constraints.Matcher, token: int) -> None:
        raise ConstraintFailed(f"the response format does not allow token {token}")

    monkeypatch.setattr(constraints.Matcher, "accept", refuse)
    handles = [
        engine.submit(request("doomed", json_grammar(SCHEMA))),
        engine.submit(request("bystander", None)),
    ]
    with pytest.raises(RequestFailed, match="response format"):
        handles[0].wait(60)
    bystander = handles[1].wait(60)
    assert isinstance(bystander, Finished) and bystander.completion_tokens == 80


def test_a_schema_that_cannot_be_compiled_is_refused_before_it_runs() -> None:
    with pytest.raises(ConstraintFailed, match="JSON schema"):
        json_grammar({"type": "no-such-type"})
    with pytest.raises(ValueError, match="grammar"):
        SamplingParams(grammar="")

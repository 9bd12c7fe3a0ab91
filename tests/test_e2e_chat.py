"""End to end over HTTP: the real server, the real models, the official OpenAI client."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.adapter_upload import chat_personal_and_plain, upload_and_promote
from tests.server import RunningServer, running_server, served_env

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = served_env(tmp_path_factory.mktemp("data"), ADMIN_KEY, TAILOR_MAX_ADAPTER_RANK="8")
    with running_server(env, timeout=120) as running:
        yield running


def new_user(server: RunningServer, name: str) -> tuple[str, str]:
    body = httpx.post(f"{server.url}/admin/users", json={"name": name}, headers=ADMIN).json()
    return body["id"], body["api_key"]


def test_the_openai_client_chats_plain_and_streamed(server: RunningServer) -> None:
    _, key = new_user(server, "openai-client")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=key)
    assert {m.id for m in client.models.list()} == {SMOL, "gemma-3-270m", "auto"}
    assert client.models.retrieve(SMOL).id == SMOL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")

    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    answer = client.chat.completions.create(
        model="auto",
        messages=messages,
        temperature=0,
        max_tokens=20,
    )
    assert answer.model == SMOL
    text = answer.choices[0].message.content
    assert text is not None and "Paris" in text
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model=SMOL,
        messages=messages,
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text

    completion = client.completions.create(
        model="gemma-3-270m",
        prompt="The Eiffel Tower is in the city of",
        max_tokens=8,
        temperature=0,
    )
    assert completion.model == "gemma-3-270m" and completion.choices[0].text


def test_fields_tailor_cannot_honour_are_refused_by_name(server: RunningServer) -> None:
    _, key = new_user(server, "honest-parameters")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=key)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi."}]
    refused: list[tuple[str, dict[str, Any]]] = [
        ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("top_k", {"extra_body": {"top_k": 40}}),
    ]
    for name, kwargs in refused:
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model=SMOL, messages=messages, max_tokens=4, **kwargs)
        assert repr(name) in str(error.value), (name, error.value)
    # Values that ask for nothing, and bookkeeping fields, are answered as usual.
    answer = client.chat.completions.create(
        model=SMOL,
        messages=messages,
        max_tokens=4,
        presence_penalty=0,
        response_format={"type": "text"},
        user="someone",
        stream_options=None,
    )
    assert answer.choices[0].message.content is not None


CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


def test_json_output_through_the_openai_client(server: RunningServer) -> None:
    _, key = new_user(server, "json-output")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=key)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Describe the capital of France as JSON."}
    ]
    # Both packaged models, greedy and sampled: whatever the model would have
    # said, the answer is JSON matching the schema.
    for model, temperature in ((SMOL, 0.0), ("gemma-3-270m", 0.8)):
        answer = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=120,
            temperature=temperature,
            seed=3,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
            },
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        value = json.loads(choice.message.content or "")
        assert set(value) == {"city", "country", "population_millions"}, value
        assert isinstance(value["city"], str) and isinstance(value["country"], str)
        assert 0 <= value["population_millions"] <= 100

    anything = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Give me a JSON object about Paris."}],
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_object"},
    )
    text = anything.choices[0].message.content or ""
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict), text
    else:  # cut by max_tokens: still the start of an object
        assert text.startswith("{"), text

    # A schema the grammar engine cannot compile is the caller's to fix.
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=SMOL,
            messages=messages,
            max_tokens=8,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
            },
        )
    assert error.value.code == "invalid_response_format" and "no-such-type" in str(error.value)


def test_log_probabilities_through_the_openai_client(server: RunningServer) -> None:
    _, key = new_user(server, "logprobs")
    client = OpenAI(base_url=f"{server.url}/v1", api_key=key)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Count from 1 to 30, separated by commas."}
    ]
    asked: dict[str, Any] = {"max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    answer = client.chat.completions.create(model=SMOL, messages=messages, **asked)
    choice = answer.choices[0]
    assert choice.finish_reason == "length" and choice.logprobs is not None
    content = choice.logprobs.content
    assert content is not None and answer.usage is not None
    assert len(content) == answer.usage.completion_tokens == 6
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        # Greedy: the chosen token is the likeliest one.
        assert len(token.top_logprobs) == 2 and token.top_logprobs[0].token == token.token
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob) and token.logprob <= 0
        assert token.bytes == list(token.token.encode("utf-8"))

    stream = client.chat.completions.create(model=SMOL, messages=messages, stream=True, **asked)
    streamed = [
        t.token
        for c in stream
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
        for t in c.choices[0].logprobs.content
    ]
    assert streamed == [t.token for t in content]

    text = client.completions.create(
        model="gemma-3-270m",
        prompt="The Eiffel Tower is in",
        max_tokens=4,
        temperature=0,
        logprobs=2,
    )
    legacy = text.choices[0].logprobs
    assert legacy is not None and legacy.tokens is not None and len(legacy.tokens) == 4
    assert legacy.top_logprobs is not None and all(
        1 <= len(top) <= 2 for top in legacy.top_logprobs
    )
    assert legacy.text_offset == [sum(map(len, legacy.tokens[:i])) for i in range(4)]


def test_responses_are_logged_for_feedback(server: RunningServer) -> None:
    _, key = new_user(server, "feedback")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers).json()
    assert answer["tailor"]["route"]["reason"] == "forced"
    rated = httpx.post(
        f"{server.url}/v1/feedback",
        json={"response_id": answer["id"], "rating": 1},
        headers=headers,
    )
    assert rated.status_code == 201


def test_the_users_active_adapter_shapes_the_answer(server: RunningServer, tmp_path: Path) -> None:
    user_id, key = new_user(server, "personal")
    uploaded = upload_and_promote(
        server.url, ADMIN, user_id=user_id, base_model=SMOL, folder=tmp_path / "peft"
    )
    personal, plain = chat_personal_and_plain(server.url, key, SMOL)
    assert [a["id"] for a in personal["tailor"]["adapters"]] == [uploaded["adapter_id"]]
    assert plain["tailor"]["adapters"] == []
    assert personal["choices"][0]["message"]["content"] != plain["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "n": 2},
            400,
            "unsupported",
        ),
        (
            {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
        ),
        ({"model": SMOL, "messages": []}, 422, "invalid_body"),
        (
            {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            422,
            "invalid_body",
        ),
        (
            {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
            400,
            "context_length_exceeded",
        ),
        (
            {"model": SMOL, "messages": [{"role": "user", "content": "word " * 5000}]},
            400,
            "context_length_exceeded",
        ),
        (
            {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            422,
            "invalid_body",
        ),
    ],
)
def test_bad_requests_get_their_status(
    server: RunningServer, body: dict[str, object], status: int, code: str
) -> None:
    _, key = new_user(server, f"bad-{secrets.token_hex(3)}")
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_malformed_json_and_a_dropped_stream_leave_the_server_healthy(
    server: RunningServer,
) -> None:
    _, key = new_user(server, "dropper")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    broken = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert broken.status_code == 422
    body = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=headers
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break  # leave after the first token
    again = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={**body, "stream": False, "max_tokens": 3},
        headers=headers,
        timeout=60,
    )
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 3


def test_metrics_count_what_was_served(server: RunningServer) -> None:
    _, key = new_user(server, "metrics")
    body = {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    text = httpx.get(f"{server.url}/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples[f'tailor_tokens_total{{kind="completion",model="{SMOL}"}}'] >= 4
    assert samples[f'tailor_routing_decisions_total{{model="{SMOL}",reason="forced"}}'] >= 1
    assert samples["tailor_routing_decision_seconds_count"] >= 1
    key_200 = 'tailor_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    assert samples[key_200] >= 1
    assert f'tailor_queue_depth{{model="{SMOL}"}}' in samples
    assert 'tailor_finetune_jobs{state="queued"}' in samples
    assert f'tailor_adapter_cache_total{{model="{SMOL}",tier="device_slot"}}' in samples
    assert any(k.startswith("tailor_time_to_first_token_seconds_bucket") for k in samples)

"""Validation at the HTTP edge: one policy on SQLite and PostgreSQL.

Hostile input (NUL, lone surrogates, strings over their column, numbers over
what storage takes, huge bodies, booleans for integers) is refused with a
4xx naming what is wrong, before anything is parsed, generated or stored,
and the same way on both databases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx2 import Response as HttpResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from adapters.base_shapes import BaseModelShapes
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from adapters.validation import ValidationLimits
from serving.openai_schemas import MAX_PROMPT_CHARACTERS
from serving.request_limits import adapter_upload_bytes
from serving.request_text import RequestBody, first_text_problem
from serving.runtime import ModelRuntime
from serving.user_schemas import Example
from storage.repositories import (
    AdapterRepository,
    ExampleRepository,
    FeedbackRepository,
    JobRepository,
    ResponseRepository,
    UserRepository,
)
from storage.tables import Response
from tests.adapter_factory import random_lora
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer
from tests.server import prepared_model_store

MODEL = "smollm2-135m-instruct"
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]
BACKENDS = [
    pytest.param(d, marks=[pytest.mark.postgres, pytest.mark.redis])
    if d.startswith("postgresql")
    else d
    for d in DEPLOYMENTS
]


@pytest.fixture(params=BACKENDS)
def deployment(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def client(deployment: str, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(deployment, tmp_path) as test_client:
        yield test_client


@pytest.fixture
def waiting_runtime(client: TestClient) -> ModelRuntime:
    """A real runtime that has loaded no model: a completion request that gets
    past validation is answered 503 ``not_ready``, so a 422 shows that the
    request was refused before any tokenisation or generation."""
    runtime = ModelRuntime(services(client))
    client.app.state.runtime = runtime  # type: ignore[attr-defined]
    return runtime


def services(client: TestClient) -> Any:
    return client.app.state.services  # type: ignore[attr-defined]


def new_user(client: TestClient, name: str) -> tuple[str, dict[str, str]]:
    response = client.post("/admin/users", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], bearer(body["api_key"])


def error(response: HttpResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["type"] == "invalid_request_error"
    return body


def raw_json(client: TestClient, url: str, text: str, headers: dict[str, str]) -> HttpResponse:
    """POST ``text`` as it is: JSON escapes such as ``\\ud800`` reach the server unchanged."""
    return client.post(
        url, content=text.encode(), headers={**headers, "Content-Type": "application/json"}
    )


def stored_responses(client: TestClient) -> int:
    with services(client).database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Response)) or 0)


def example_count(client: TestClient, user_id: str) -> int:
    with services(client).database.session() as session:
        return ExampleRepository(session).count(user_id=user_id)


def peft_files(tmp_path: Path) -> dict[str, bytes]:
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / MODEL)
    directory = tmp_path / "peft"
    export_peft_dir(random_lora(shapes, base_model_id=MODEL, seed=1), directory)
    return {name: (directory / name).read_bytes() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}


def upload(
    client: TestClient, files: dict[str, bytes], user_id: str, **fields: str
) -> HttpResponse:
    return client.post(
        "/admin/adapters",
        data={"base_model": MODEL, "user_id": user_id, **fields},
        files=[("file", (name, content)) for name, content in files.items()],
        headers=ADMIN,
    )


# Text: no NUL, no lone surrogate, anywhere ------------------------------------


def test_chat_and_completions_with_bad_text_are_refused_before_generation(
    client: TestClient, waiting_runtime: ModelRuntime
) -> None:
    _, key = new_user(client, "ada")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    # Without bad text the request reaches the runtime, which has no model.
    assert client.post("/v1/chat/completions", json=chat, headers=key).status_code == 503

    cases: list[tuple[str, dict[str, Any], str]] = [
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": "a\u0000b"}]},
            "messages.0.content: contains a NUL",
        ),
        (
            "/v1/chat/completions",
            {**chat, "stream": True, "messages": [CHAT[0], {"role": "user", "content": "\u0000"}]},
            "messages.1.content: contains a NUL",
        ),
        (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": [{"type": "text", "text": "\0"}]}]},
            "messages.0.content.0.text: contains a NUL",
        ),
        ("/v1/chat/completions", {**chat, "stop": ["ok", "x\u0000"]}, "stop.1: contains a NUL"),
        ("/v1/chat/completions", {**chat, "user": "\u0000"}, "user: contains a NUL"),
        ("/v1/completions", {"model": MODEL, "prompt": "p\u0000"}, "prompt: contains a NUL"),
        ("/v1/completions", {"model": MODEL, "prompt": ["\u0000"]}, "prompt.0: contains a NUL"),
        ("/v1/completions", {"model": MODEL, "prompt": "p", "stop": "\0"}, "stop: contains a NUL"),
    ]
    for url, body, named in cases:
        response = client.post(url, json=body, headers=key)
        assert named in error(response, 422)["message"], body
        assert response.headers["content-type"] == "application/json"

    # A lone surrogate is legal as a JSON escape but is not Unicode.
    for url, text, named in [
        (
            "/v1/chat/completions",
            '{"model": "auto", "messages": [{"role": "user", "content": "lone \\ud800"}]}',
            "messages.0.content: contains a lone surrogate (U+D800)",
        ),
        (
            "/v1/completions",
            '{"model": "auto", "prompt": "\\udfff lone", "stream": true}',
            "prompt: contains a lone surrogate (U+DFFF)",
        ),
    ]:
        response = raw_json(client, url, text, key)
        assert named in error(response, 422)["message"]
    assert stored_responses(client) == 0


def test_bad_text_in_stored_fields_is_refused_and_nothing_is_stored(
    client: TestClient, tmp_path: Path
) -> None:
    ada, key = new_user(client, "ada")
    nul_example = {"messages": [CHAT[0], {"role": "assistant", "content": "bye\u0000"}]}
    cases: list[tuple[str, Any, str]] = [
        ("/v1/examples", {"examples": [{"messages": CHAT}, nul_example]}, "example 2: messages.1"),
        ("/v1/examples", {"examples": [{"messages": CHAT, "x\u0000": 1}]}, "x\\u0000"),
        ("/v1/feedback", {"response_id": "chatcmpl_\u0000", "rating": 1}, "response_id"),
        ("/v1/feedback", {"response_id": "a", "preferred_over": "b\u0000"}, "preferred_over"),
        ("/v1/fine-tunes", {"model": "auto\u0000"}, "model: contains a NUL"),
    ]
    for url, body, named in cases:
        assert named in error(client.post(url, json=body, headers=key), 422)["message"], body
    lines = json.dumps({"messages": CHAT}) + "\n" + json.dumps(nul_example) + "\n"
    response = client.post(
        "/v1/examples", content=lines, headers={**key, "Content-Type": "application/jsonl"}
    )
    assert "line 2: messages.1.content: contains a NUL" in error(response, 422)["message"]
    surrogate = '{"examples": [{"messages": [{"role": "assistant", "content": "\\ud83d"}]}]}'
    response = raw_json(client, "/v1/examples", surrogate, key)
    assert "lone surrogate" in error(response, 422)["message"]

    for body in ({"name": "eve\u0000"}, {"name": "eve", "scopes": ["user\u0000"]}):
        response = client.post("/admin/users", json=body, headers=ADMIN)
        assert "contains a NUL" in error(response, 422)["message"]
    response = client.post("/admin/jobs", json={"model": MODEL, "user_id": "\0"}, headers=ADMIN)
    assert "user_id: contains a NUL" in error(response, 422)["message"]
    response = upload(client, peft_files(tmp_path), ada, name="mine\u0000")
    assert "name: contains a NUL" in error(response, 422)["message"]

    assert example_count(client, ada) == 0
    with services(client).database.session() as session:
        assert JobRepository(session).list_page(user_id=None, limit=10) == []
        assert [u.name for u in UserRepository(session).list_page()] == ["ada"]
        assert AdapterRepository(session).list_all() == []

    # What is refused is only that: any other Unicode is stored as sent.
    text = "caf\u00e9 \U0001f600 \ufffd \u200b"
    example = {"messages": [CHAT[0], {"role": "assistant", "content": text}]}
    assert client.post("/v1/examples", json={"examples": [example]}, headers=key).status_code == 201
    page = client.get("/v1/examples", headers=key).json()
    assert page["data"][0]["messages"][1]["content"] == text


def test_examples_python_cannot_read_are_a_422_and_nothing_is_stored(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    example = json.dumps({"messages": CHAT})
    cases: list[tuple[str | bytes, str]] = [
        (b'{"examples": [{"messages": [{"role": "user", "content": "\xff"}]}]}', "json"),
        ('{"examples": [' + "9" * 5000 + "]}", "json"),
        ('{"examples": ' + "[" * 100_000 + "]" * 100_000 + "}", "json"),
        (example + "\n" + '{"n": ' + "9" * 5000 + "}", "jsonl"),
        (example + "\n" + "[" * 100_000 + "]" * 100_000, "jsonl"),
    ]
    for body, kind in cases:
        response = client.post(
            "/v1/examples", content=body, headers={**key, "Content-Type": f"application/{kind}"}
        )
        message = error(response, 422)["message"]
        assert kind == "json" or message.startswith("line 2: "), message
    assert example_count(client, ada) == 0


def test_bad_text_in_path_query_or_headers_is_a_400_naming_it(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    cases = [
        ("/v1/fine-tunes/x%00y", key, "path parameter job_id: contains a NUL"),
        ("/admin/users/usr%00/keys", ADMIN, "path parameter user_id"),
        ("/admin/users?after=%00", ADMIN, "query parameter after: contains a NUL"),
        ("/admin/jobs?user_id=a%00", ADMIN, "query parameter user_id"),
        ("/v1/examples?after=%00", key, "query parameter after"),
        ("/v1/models?%00=1", key, "query parameter \\u0000"),
        ("/nowhere%00", key, "path: contains a NUL"),
        ("/admin/static/x%00.css", ADMIN, "path: contains a NUL"),
    ]
    for url, headers, named in cases:
        response = client.get(url, headers=headers)
        body = error(response, 400)
        assert named in body["message"], (url, body)
        assert body["code"] == "invalid_parameter"

    retry = {**key, "Idempotency-Key": "try\u00001"}
    response = client.post("/v1/fine-tunes", json={}, headers=retry)
    assert "header idempotency-key: contains a NUL" in error(response, 400)["message"]
    with services(client).database.session() as session:
        assert JobRepository(session).list_page(user_id=ada, limit=10) == []


# Lengths and numbers within what storage takes ---------------------------------


def test_stored_strings_are_bounded_by_their_columns(client: TestClient, tmp_path: Path) -> None:
    ada, _ = new_user(client, "ada")
    files = peft_files(tmp_path)
    response = upload(client, files, ada, name="n" * 101)
    assert "name: at most 100 characters" in error(response, 422)["message"]
    response = upload(client, files, "u" * 33)
    assert "user_id: at most 32 characters" in error(response, 422)["message"]
    response = client.post("/admin/users", json={"name": "n" * 201}, headers=ADMIN)
    assert "name" in error(response, 422)["message"]
    response = client.post("/admin/jobs", json={"model": "m" * 101}, headers=ADMIN)
    assert "model" in error(response, 422)["message"]
    with services(client).database.session() as session:
        assert AdapterRepository(session).list_all() == []

    # At the column's length, it is stored, on both databases.
    stored = upload(client, files, ada, name="n" * 100)
    assert stored.status_code == 201, stored.text
    listed = client.get("/admin/adapters", headers=ADMIN).json()["data"]
    assert [a["name"] for a in listed] == ["n" * 100]
    # A lookup by an over-long id is a plain 404, never a database error.
    assert client.get(f"/admin/users/{'u' * 500}", headers=ADMIN).status_code == 404
    assert client.get(f"/admin/jobs?user_id={'u' * 500}", headers=ADMIN).status_code == 200


def test_cursors_are_bounded_to_64_bit_row_ids(client: TestClient) -> None:
    _, key = new_user(client, "ada")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]
    added = client.post("/v1/examples", json={"examples": [{"messages": chat}] * 10}, headers=key)
    assert added.status_code == 201, added.text
    job = client.post("/v1/fine-tunes", json={}, headers=key).json()
    urls = [
        ("/v1/examples", key),
        (f"/v1/fine-tunes/{job['id']}/events", key),
        (f"/admin/jobs/{job['id']}/events", ADMIN),
    ]
    for url, headers in urls:
        huge = client.get(f"{url}?after=99999999999999999999999", headers=headers)
        assert "query.after" in error(huge, 422)["message"], url
        assert client.get(f"{url}?after={2**63}", headers=headers).status_code == 422
        largest = client.get(f"{url}?after={2**63 - 1}", headers=headers)
        assert largest.status_code == 200 and largest.json()["data"] == [], url


def test_seed_is_a_signed_64_bit_integer_and_numbers_are_finite(
    client: TestClient, waiting_runtime: ModelRuntime
) -> None:
    _, key = new_user(client, "ada")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for seed in (2**63, -(2**63) - 1, 10**30):
        response = client.post("/v1/chat/completions", json={**chat, "seed": seed}, headers=key)
        assert "seed" in error(response, 422)["message"]
    for seed in (2**63 - 1, -(2**63)):
        response = client.post("/v1/chat/completions", json={**chat, "seed": seed}, headers=key)
        assert response.status_code == 503, response.text  # past validation: no model loaded

    # JSON as Python reads it takes Infinity and NaN; storage cannot show them.
    for field in ("max_price", "cost_weight", "latency_slo_seconds"):
        text = json.dumps({**chat, field: 1.0}).replace("1.0", "Infinity")
        response = raw_json(client, "/v1/chat/completions", text, key)
        assert field in error(response, 422)["message"]
        text = json.dumps({field: 1.0}).replace("1.0", "NaN")
        response = client.patch(
            "/v1/routing", content=text, headers={**key, "Content-Type": "application/json"}
        )
        assert field in error(response, 422)["message"]
        # Finite but absurd: bounded too, on requests and on preferences.
        response = client.post("/v1/chat/completions", json={**chat, field: 1e308}, headers=key)
        assert field in error(response, 422)["message"]
        response = client.patch("/v1/routing", json={field: 1e308}, headers=key)
        assert field in error(response, 422)["message"]
    assert client.get("/v1/routing", headers=key).json() == {
        "cost_weight": None,
        "max_price": None,
        "latency_slo_seconds": None,
    }
    assert stored_responses(client) == 0


def test_rating_is_a_strict_integer(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    with services(client).database.session() as session:
        ResponseRepository(session).record(
            response_id="chatcmpl_a1",
            user_id=ada,
            base_model_id=MODEL,
            endpoint="chat.completions",
            request={"messages": CHAT[:1]},
            output_text="hello!",
            finish_reason="stop",
            routing_decision={"model": MODEL, "reason": "forced"},
            adapters_used=[],
            prompt_tokens=5,
            completion_tokens=2,
        )
    for rating in (True, False, "1", 1.0, 1.5):
        body = {"response_id": "chatcmpl_a1", "rating": rating}
        response = client.post("/v1/feedback", json=body, headers=key)
        assert "rating" in error(response, 422)["message"], rating
    with services(client).database.session() as session:
        assert FeedbackRepository(session).count(user_id=ada) == 0
    body = {"response_id": "chatcmpl_a1", "rating": -1}
    assert client.post("/v1/feedback", json=body, headers=key).status_code == 201


def test_prompts_are_bounded_in_characters_before_tokenisation(
    client: TestClient, waiting_runtime: ModelRuntime
) -> None:
    _, key = new_user(client, "ada")
    half = "x" * (MAX_PROMPT_CHARACTERS // 2)
    over: list[tuple[str, dict[str, Any]]] = [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": c} for c in (half, half + "x")]},
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": half * 2 + "x"}]}),
        ("/v1/completions", {"prompt": half * 2 + "x"}),
        ("/v1/completions", {"prompt": [half, half + "x"]}),
    ]
    for url, fields in over:
        response = client.post(url, json={"model": MODEL, **fields}, headers=key)
        message = error(response, 422)["message"]
        assert f"at most {MAX_PROMPT_CHARACTERS} are accepted" in message, url
        assert message.startswith(("messages:", "prompt:")), message
    # At the bound it passes validation (and meets the runtime with no model).
    exact = {"model": MODEL, "messages": [{"role": "user", "content": half * 2}]}
    assert client.post("/v1/chat/completions", json=exact, headers=key).status_code == 503


# The body-size limit ---------------------------------------------------------


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(
    deployment: str, tmp_path: Path
) -> None:
    limit = 2048
    with app_client(deployment, tmp_path, server={"max_request_bytes": limit}) as client:
        ada, key = new_user(client, "ada")
        not_json = b"{" * (limit + 1)
        for headers in (key, {}):  # before the key is even checked
            response = client.post(
                "/v1/chat/completions",
                content=not_json,
                headers={**headers, "Content-Type": "application/json"},
            )
            body = error(response, 413)
            assert body["code"] == "too_large" and str(limit) in body["message"]
        # At the limit the body is read, and refused for what it is.
        at_limit = client.post(
            "/v1/chat/completions",
            content=b"{" * limit,
            headers={**key, "Content-Type": "application/json"},
        )
        assert at_limit.status_code == 422

        # No Content-Length (chunked): counted as it streams in.
        def chunks() -> Iterator[bytes]:
            for _ in range(limit // 100 + 2):
                yield b"{" * 100

        chunked = client.post(
            "/admin/users", content=chunks(), headers={**ADMIN, "Content-Type": "application/json"}
        )
        assert "content-length" not in chunked.request.headers
        assert error(chunked, 413)["code"] == "too_large"
        many = json.dumps({"examples": [{"messages": CHAT}] * 50}).encode()
        chunked = client.post(
            "/v1/fine-tunes",
            content=iter([many[i : i + 100] for i in range(0, len(many), 100)]),
            headers={**key, "Content-Type": "application/json"},
        )
        assert error(chunked, 413)["code"] == "too_large"
        with services(client).database.session() as session:
            assert JobRepository(session).list_page(user_id=ada, limit=10) == []

        # Routes that take larger bodies by design keep their own limits.
        assert len(many) > limit
        stored = client.post(
            "/v1/examples", content=many, headers={**key, "Content-Type": "application/json"}
        )
        assert stored.status_code == 201 and stored.json()["stored"] == 50
        files = peft_files(tmp_path)
        assert sum(len(f) for f in files.values()) > limit
        uploaded = upload(client, files, ada)
        assert uploaded.status_code == 201, uploaded.text
        # ... and the upload's per-file limit still answers,
        services(client).adapters.limits = ValidationLimits(max_file_bytes=1024)
        too_large = error(upload(client, files, ada), 413)
        assert too_large["code"] == "too_large" and ADAPTER_WEIGHTS in too_large["message"]
        # while the upload's body limit follows it: three files and the framing.
        padded = {**files, "notes.txt": b"n" * 200_000}
        too_large = error(upload(client, padded, ada), 413)
        assert f"over the {adapter_upload_bytes(1024)} byte limit" in too_large["message"]


# One mechanism that cannot be forgotten ----------------------------------------


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models_in(field.annotation)
    for argument in getattr(annotation, "__args__", ()):
        yield from _models_in(argument)


# Routes that read their body themselves, and where they apply the text rule.
RAW_BODY_ROUTES = {
    ("POST", "/v1/examples"),  # each example is an `Example` (a RequestBody)
    ("POST", "/admin/adapters"),  # multipart: `_form_text` checks each text field
    ("POST", "/admin/login"),  # the dashboard's forms: nothing of them is stored
    ("POST", "/admin/logout"),
}


def test_every_request_body_is_a_request_body(tmp_path: Path) -> None:
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        contexts = list(iter_route_contexts(client.app.routes))  # type: ignore[attr-defined]
    bodies = {
        (method, str(context.path)): context.original_route.body_field
        for context in contexts
        if isinstance(context.original_route, APIRoute)
        and context.original_route.body_field is not None
        for method in context.original_route.methods or ()
    }
    assert ("POST", "/v1/chat/completions") in bodies and len(bodies) >= 8
    for (method, path), field in bodies.items():
        if (method, path) in RAW_BODY_ROUTES:
            continue
        models = list(_models_in(field.field_info.annotation))
        assert models, (method, path)
        for model in models:
            assert issubclass(model, RequestBody), (method, path, model)
    assert issubclass(Example, RequestBody)
    forms = {key for key in bodies if key in RAW_BODY_ROUTES}
    assert forms == {("POST", "/admin/login"), ("POST", "/admin/logout")}


def test_the_text_walk_names_the_first_bad_string_at_any_depth() -> None:
    deep: Any = "ok"
    for _ in range(5000):
        deep = [deep]
    assert first_text_problem({"a": deep, "b": ["fine", {"c": "x\u0000"}]}) == (
        ("b", 1, "c"),
        "contains a NUL character (U+0000), which is not accepted",
    )
    assert first_text_problem(["\ud800"]) == (
        (0,),
        "contains a lone surrogate (U+D800), which is not valid Unicode",
    )
    assert first_text_problem({"k\udc00": 1}) == (
        ("k\\udc00",),
        "the key contains a lone surrogate (U+DC00), which is not valid Unicode",
    )
    assert first_text_problem({"a": ["\U0001f600", 1, None, 2.5]}) is None


def test_a_chat_is_routed_on_its_latest_user_turn() -> None:
    from serving.openai_schemas import ChatCompletionCreate

    # The router reads a text's first few tokens: a long system prompt or the first turn
    # must not stand in for what each later turn asks.
    system = "You are a careful assistant. " * 40
    chat = ChatCompletionCreate.model_validate(
        {
            "model": "auto",
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": [{"type": "text", "text": "Prove Fermat's last"}]},
            ],
        }
    )
    assert chat.routing_text == "Prove Fermat's last"
    assert chat.transcript.startswith(system) and chat.transcript.endswith("Prove Fermat's last")
    # No user turn at all: the whole transcript, as before.
    only_system = ChatCompletionCreate.model_validate(
        {"model": "auto", "messages": [{"role": "system", "content": "Say hi."}]}
    )
    assert only_system.routing_text == only_system.transcript == "Say hi."

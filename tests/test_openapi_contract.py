"""The OpenAPI schema describes what clients receive (issue 18, item 3).

Every route family is called on a live app (real SQLite, or PostgreSQL and Redis) and
each answer is checked against what ``/openapi.json`` declares for its path, method and
status: the status must be declared (exactly, or as ``4XX``/``5XX``), the content type
must be one of that response's, and a JSON body must validate against its schema with no
field beyond those declared (``additionalProperties: false`` wherever the schema names
its properties and does not say otherwise) and none of the required ones missing.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response as HttpResponse
from jsonschema import Draft202012Validator

from router import Candidate, EagleRouter, ExpertEvidence, RouteRequest
from serving.runtime import ModelRuntime
from storage.repositories import JobRepository
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer
from tests.logged_responses import log_response
from tests.test_api_adapters import peft_files, weights
from tests.test_router_eagle import TopicEmbedder
from tests.tiny_models import build_tiny_model

SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
CHAT = {"model": SMOL, "messages": [{"role": "user", "content": "Name a colour."}]}
# The operations whose success needs models loaded in this process: the slow test's.
COMPLETIONS = {("post", "/v1/chat/completions"), ("post", "/v1/completions")}
BACKENDS = [
    pytest.param(d, marks=[pytest.mark.postgres, pytest.mark.redis])
    if d.startswith("postgresql")
    else d
    for d in DEPLOYMENTS
]


def closed(schema: Any) -> Any:
    """``schema`` with every object that names its properties closed to any other."""
    if isinstance(schema, dict):
        out = {key: closed(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


class Contract:
    """The app's OpenAPI document, and the answers checked against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.components = closed(copy.deepcopy(document["components"]))
        self._paths: list[tuple[re.Pattern[str], str]] = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
            for t in document["paths"]
        ]
        # (method, path template, status) of every answer checked.
        self.checked: set[tuple[str, str, int]] = set()

    def template(self, path: str) -> str:
        matches = [t for pattern, t in self._paths if pattern.match(path)]
        assert matches, f"{path} is in no path of the OpenAPI schema"
        return min(matches, key=lambda t: t.count("{"))  # a literal path before a template

    def errors(self, schema: dict[str, Any], body: Any) -> list[str]:
        validator = Draft202012Validator(
            {**schema, "components": self.components},
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        return [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<body>'}: {e.message}"
            for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        ]

    def check(self, response: HttpResponse) -> HttpResponse:
        method = response.request.method.lower()
        template = self.template(response.request.url.path)
        operation = self.document["paths"][template].get(method)
        assert operation is not None, f"{method.upper()} {template} is not in the schema"
        status = str(response.status_code)
        declared = operation["responses"]
        entry = declared.get(status) or declared.get(f"{status[0]}XX") or declared.get("default")
        where = f"{method.upper()} {template} -> {status}"
        assert entry is not None, f"{where}: a status its schema does not declare"
        media = response.headers.get("content-type", "").split(";")[0].strip()
        content = entry.get("content", {})
        assert media in content, f"{where}: {media!r} is not among {sorted(content)}"
        if media == "application/json":
            problems = self.errors(content[media]["schema"], response.json())
            assert not problems, f"{where}: the body does not match its schema:\n" + "\n".join(
                problems
            )
        self.checked.add((method, template, response.status_code))
        return response

    def unanswered(self) -> set[tuple[str, str]]:
        """The operations no successful (2xx) answer of which was checked."""
        operations = {(m, t) for t, ops in self.document["paths"].items() for m in ops}
        answered = {(m, t) for m, t, status in self.checked if 200 <= status < 300}
        return operations - answered


class Api:
    """A test client whose every answer is checked against the contract, and whose
    status is the one expected."""

    def __init__(self, client: TestClient, contract: Contract) -> None:
        self.client = client
        self.contract = contract

    def call(self, method: str, url: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.contract.check(self.client.request(method, url, **kwargs))
        assert response.status_code == expect, f"{method} {url}: {response.text}"
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response

    def get(self, url: str, expect: int = 200, **kwargs: Any) -> Any:
        return self.call("GET", url, expect, **kwargs)

    def post(self, url: str, expect: int = 200, **kwargs: Any) -> Any:
        return self.call("POST", url, expect, **kwargs)

    def patch(self, url: str, expect: int = 200, **kwargs: Any) -> Any:
        return self.call("PATCH", url, expect, **kwargs)

    def delete(self, url: str, expect: int = 200, **kwargs: Any) -> Any:
        return self.call("DELETE", url, expect, **kwargs)


def services(client: TestClient) -> Any:
    return client.app.state.services  # type: ignore[attr-defined]


def api_of(client: TestClient) -> Api:
    return Api(client, Contract(client.get("/openapi.json").json()))


def new_user(api: Api, name: str) -> tuple[str, dict[str, str]]:
    body = api.post("/admin/users", 201, json={"name": name}, headers=ADMIN)
    return body["id"], bearer(body["api_key"])


def upload(api: Api, tmp_path: Path, seed: int, user_id: str | None) -> dict[str, Any]:
    fields = {"base_model": SMOL, **({"user_id": user_id} if user_id else {"kind": "generalist"})}
    files = peft_files(tmp_path, weights(seed))
    version: dict[str, Any] = api.post(
        "/admin/adapters",
        201,
        data=fields,
        files=[("file", (name, content)) for name, content in files.items()],
        headers=ADMIN,
    )
    return version


@pytest.fixture(params=BACKENDS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path) as test_client:
        yield test_client


def test_every_route_answers_as_its_schema_says(client: TestClient, tmp_path: Path) -> None:
    api = api_of(client)
    database = services(client).database

    # Health ---------------------------------------------------------------------------
    api.get("/healthz")
    api.get("/readyz")

    # Admin: users and keys --------------------------------------------------------------
    ada, ada_key = new_user(api, "ada")
    bob, bob_key = new_user(api, "bob")
    api.post("/admin/users", 409, json={"name": "ada"}, headers=ADMIN)
    api.get("/admin/users?limit=1", headers=ADMIN)
    api.patch(f"/admin/users/{ada}/fine-tuning", json={"max_generic_rise": 0.2}, headers=ADMIN)
    key = api.post(f"/admin/users/{bob}/keys", 201, json={"scopes": ["user"]}, headers=ADMIN)
    api.delete(f"/admin/keys/{key['id']}", headers=ADMIN)
    api.get("/admin/models", headers=ADMIN)
    # Models are added to a store of their own, never to the prepared one.
    (tmp_path / "own-models").mkdir()
    with app_client("sqlite+memory", tmp_path / "own-models", real_models=False) as own:
        models_api = Api(own, api.contract)
        tiny = {"id": "tiny", "path": str(build_tiny_model("llama", tmp_path / "tiny"))}
        models_api.post("/admin/models", 201, json=tiny, headers=ADMIN)
        models_api.post("/admin/models", 409, json=tiny, headers=ADMIN)
        nothing = {"id": "none", "path": str(tmp_path / "nothing")}
        models_api.post("/admin/models", 422, json=nothing, headers=ADMIN)
        models_api.delete("/admin/models/tiny", headers=ADMIN)
        models_api.delete("/admin/models/tiny", 404, headers=ADMIN)

    # The caller's data: models, examples, feedback, routing ------------------------------
    api.get("/v1/models", headers=ada_key)
    api.get("/v1/models/auto", headers=ada_key)
    api.get("/v1/models/no-such-model", 404, headers=ada_key)
    examples = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i in range(10)
    ]
    api.post("/v1/examples", 201, json={"examples": examples}, headers=ada_key)
    api.get("/v1/examples?limit=3", headers=ada_key)
    api.post("/v1/examples", 422, json={"examples": [{"messages": []}]}, headers=ada_key)

    answered = log_response(database, ada, SMOL, "math: one")
    other = log_response(database, ada, GEMMA, "math: one")
    rating = {"response_id": answered, "rating": 1}
    api.post("/v1/feedback", 201, json=rating, headers=ada_key)
    api.post("/v1/feedback", 200, json=rating, headers=ada_key)
    api.post("/v1/feedback", 409, json={**rating, "rating": -1}, headers=ada_key)
    api.post(
        "/v1/feedback",
        201,
        json={"response_id": other, "preferred_over": answered},
        headers=ada_key,
    )
    api.post(
        "/v1/feedback", 404, json={"response_id": "chatcmpl-none", "rating": 0}, headers=bob_key
    )
    api.get("/admin/users/" + ada, headers=ADMIN)

    api.get("/v1/routing", headers=ada_key)
    api.patch("/v1/routing", json={"cost_weight": 0.5, "max_price": None}, headers=ada_key)
    api.patch(f"/admin/users/{bob}/routing", json={"latency_slo_seconds": 3.0}, headers=ADMIN)

    # Fine-tunes, the caller's and the admin's ---------------------------------------------
    once = {**ada_key, "Idempotency-Key": "contract-1"}
    job = api.post("/v1/fine-tunes", 201, json={"hyperparameters": {"epochs": 2}}, headers=once)
    api.post("/v1/fine-tunes", 200, json={"hyperparameters": {"epochs": 2}}, headers=once)
    api.post("/v1/fine-tunes", 404, json={"model": "gpt-9"}, headers=ada_key)
    api.get("/v1/fine-tunes", headers=ada_key)
    api.get(f"/v1/fine-tunes/{job['id']}", headers=ada_key)
    with database.session() as session:
        # As a worker reports its progress.
        JobRepository(session).add_event(
            job_id=job["id"], attempt=1, kind="progress", payload={"step": 1, "loss": 2.5}
        )
        session.commit()
    api.get(f"/v1/fine-tunes/{job['id']}/events", headers=ada_key)
    api.post(f"/v1/fine-tunes/{job['id']}/cancel", headers=ada_key)
    api.post(f"/v1/fine-tunes/{job['id']}/cancel", 409, headers=ada_key)
    api.get(f"/v1/fine-tunes/{job['id']}", 404, headers=bob_key)

    # OpenAI's files and fine-tuning jobs ---------------------------------------------------
    lines = "".join(json.dumps(example) + "\n" for example in examples).encode()
    form = {"purpose": "fine-tune"}
    file = api.post(
        "/v1/files", 201, files={"file": ("t.jsonl", lines)}, data=form, headers=ada_key
    )
    api.post("/v1/files", 422, files={"file": ("t.jsonl", b"{}")}, data=form, headers=ada_key)
    api.get("/v1/files?limit=5", headers=ada_key)
    api.get(f"/v1/files/{file['id']}", headers=ada_key)
    api.get(f"/v1/files/{file['id']}/content", headers=ada_key)
    api.get(f"/v1/files/{file['id']}", 404, headers=bob_key)
    openai_job = {"model": SMOL, "training_file": file["id"], "suffix": "contract"}
    ft_job = api.post("/v1/fine_tuning/jobs", 201, json=openai_job, headers=ada_key)
    api.post(
        "/v1/fine_tuning/jobs",
        400,
        json={**openai_job, "hyperparameters": {"warmup": 1}},
        headers=ada_key,
    )
    api.get("/v1/fine_tuning/jobs?limit=1", headers=ada_key)
    api.get(f"/v1/fine_tuning/jobs/{ft_job['id']}", headers=ada_key)
    with database.session() as session:
        JobRepository(session).add_event(
            job_id=ft_job["id"], attempt=1, kind="progress", payload={"step": 1, "loss": 2.5}
        )
        session.commit()
    api.get(f"/v1/fine_tuning/jobs/{ft_job['id']}/events", headers=ada_key)
    api.delete(f"/v1/files/{file['id']}", 409, headers=ada_key)
    api.post(f"/v1/fine_tuning/jobs/{ft_job['id']}/cancel", headers=ada_key)
    api.delete(f"/v1/files/{file['id']}", headers=ada_key)

    generalist_job = api.post("/admin/jobs", 201, json={"model": SMOL}, headers=ADMIN)
    api.post("/admin/jobs", 201, json={"model": SMOL, "user_id": ada}, headers=ADMIN)
    api.get("/admin/jobs", headers=ADMIN)
    api.get(f"/admin/jobs/{job['id']}", headers=ADMIN)
    api.get(f"/admin/jobs/{job['id']}/events", headers=ADMIN)
    api.post(f"/admin/jobs/{job['id']}/retry", headers=ADMIN)
    api.post(f"/admin/jobs/{generalist_job['id']}/cancel", headers=ADMIN)
    api.get("/admin/jobs/ftjob_missing", 404, headers=ADMIN)

    # Adapters -------------------------------------------------------------------------
    first = upload(api, tmp_path, 1, ada)
    second = upload(api, tmp_path, 2, ada)
    shared = upload(api, tmp_path, 3, None)
    api.post(f"/admin/adapters/{shared['id']}/promote", headers=ADMIN)
    api.post(f"/v1/adapters/{first['id']}/promote", headers=ada_key)
    api.post(f"/admin/adapters/{second['id']}/promote", headers=ADMIN)
    api.post(f"/v1/adapters/{second['id']}/promote", 409, headers=ada_key)
    api.get("/v1/adapters", headers=ada_key)
    api.post(f"/v1/adapters/{first['adapter_id']}/rollback", headers=ada_key)
    third = upload(api, tmp_path, 4, ada)
    api.post(f"/admin/adapters/{third['id']}/promote", headers=ADMIN)
    api.post(f"/admin/adapters/{first['adapter_id']}/rollback", headers=ADMIN)
    api.get(f"/admin/adapters?user_id={ada}", headers=ADMIN)
    api.get(f"/admin/adapters/{first['adapter_id']}/download", headers=ADMIN)
    api.delete(f"/admin/adapters/{second['id']}", headers=ADMIN)
    api.delete(f"/admin/adapters/{shared['adapter_id']}", headers=ADMIN)
    api.get("/admin/adapters", headers=ADMIN)
    # Promoted versions are the caller's fine-tuned models (ft:...), listed and retrieved.
    listed = api.get("/v1/models", headers=ada_key)["data"]
    fine_tuned = [m["id"] for m in listed if m["id"].startswith("ft:")]
    assert fine_tuned, listed
    api.get(f"/v1/models/{fine_tuned[0]}", headers=ada_key)
    api.get(f"/v1/models/{fine_tuned[0]}", 404, headers=bob_key)

    # The router, without one and with the learning one -----------------------------------
    api.get("/admin/router?window_hours=1", headers=ADMIN)
    api.get("/admin/router/calibration", headers=ADMIN)
    api.get("/admin/router", 422, params={"window_hours": 0}, headers=ADMIN)
    router = EagleRouter([SMOL, GEMMA], TopicEmbedder())
    client.app.state.runtime = ModelRuntime(services(client), router=router)  # type: ignore[attr-defined]
    api.get("/readyz", 503)  # its models not loaded: the 503 has the checks' body
    api.post(
        "/v1/feedback", 201, json={"response_id": other, "rating": -1}, headers=ada_key
    )  # the route syncs the learning router
    candidates = [
        Candidate(SMOL, cost_per_million_tokens=1.0, chat=True),
        Candidate(GEMMA, cost_per_million_tokens=2.0, chat=True),
    ]
    experts = (ExpertEvidence(SMOL, first["id"], generalists=1, gain=0.05, significant=True),)
    limited: dict[str, Any] = {"max_price_per_million": 1.5, "cost_weight": 0.2, "experts": experts}
    for limits in ({}, limited):
        request = RouteRequest(
            user_id=ada, prompt_text="math: two", prompt_tokens=4, max_tokens=16, **limits
        )
        router.route(request, candidates)
    state = api.get("/admin/router", headers=ADMIN)
    # Both decisions were checked, the one with a price ceiling and experts among them.
    assert state["router"] == "eagle" and "max_price" in state["recent"][0]
    api.post(f"/admin/users/{ada}/routing/reset", headers=ADMIN)

    # The dashboard's chart points ------------------------------------------------------
    history = client.app.state.metrics_history  # type: ignore[attr-defined]
    history.sample()
    history.sample()
    api.get("/admin/overview", headers=ADMIN)

    # Errors: every one in the error shape its schema declares ----------------------------
    api.get("/v1/models", 401)
    api.get("/v1/models", 401, headers=bearer("tl-not-a-key"))
    api.get("/admin/users", 403, headers=ada_key)
    api.get("/v1/examples", 422, params={"limit": 0}, headers=ada_key)
    api.post("/v1/chat/completions", 422, json={"model": SMOL}, headers=ada_key)
    # No model is loaded in this process.
    api.post("/v1/chat/completions", 503, json=CHAT, headers=ada_key)
    api.post("/v1/completions", 503, json={"model": SMOL, "prompt": "Hi"}, headers=ada_key)

    assert api.contract.unanswered() == COMPLETIONS


def test_the_check_refuses_a_field_not_declared_and_a_required_one_missing(
    tmp_path: Path,
) -> None:
    with app_client("sqlite+memory", tmp_path, real_models=False) as test_client:
        contract = api_of(test_client).contract
    feedback = contract.document["paths"]["/v1/feedback"]["post"]["responses"]["201"]
    schema = feedback["content"]["application/json"]["schema"]
    body = {
        "id": 1,
        "object": "feedback",
        "response_id": "chatcmpl-1",
        "rating": 1,
        "preferred_over": None,
        "duplicate": False,
        "created_at": "2026-01-01T00:00:00Z",
    }
    assert contract.errors(schema, body) == []
    assert contract.errors(schema, {**body, "weight": 2.0}) != []
    assert contract.errors(schema, {k: v for k, v in body.items() if k != "preferred_over"}) != []
    # Nested too: a route decision with a field the router does not declare.
    route = {"$ref": "#/components/schemas/RoutePublic"}
    decision = {"model": SMOL, "scores": {SMOL: 0.5}, "reason": "forced"}
    assert contract.errors(route, decision) == []
    assert contract.errors(route, {**decision, "secret": 1}) != []
    assert contract.errors(route, {**decision, "explored": None}) != []


@pytest.mark.slow
@pytest.mark.models
def test_completions_answer_as_their_schema_says(tmp_path: Path) -> None:
    """The completion bodies, from the real models and the learning router (MiniLM)."""
    with app_client("sqlite+memory", tmp_path) as test_client:
        runtime = ModelRuntime(services(test_client))
        test_client.app.state.runtime = runtime  # type: ignore[attr-defined]
        runtime.start()
        try:
            assert runtime.loaded.wait(timeout=300), runtime.load_error
            api = api_of(test_client)
            ada, ada_key = new_user(api, "ada")
            version = upload(api, tmp_path, 1, ada)
            api.post(f"/admin/adapters/{version['id']}/promote", headers=ADMIN)
            short = {"max_tokens": 4, "temperature": 0}

            chat = api.post("/v1/chat/completions", json={**CHAT, **short}, headers=ada_key)
            assert chat["tailor"]["adapters"][0]["version_id"] == version["id"]
            routed = {"model": "auto", "messages": CHAT["messages"], "max_price": 1e6, **short}
            auto = api.post("/v1/chat/completions", json=routed, headers=ada_key)
            assert "max_price" in auto["tailor"]["route"]
            plain = {**CHAT, **short, "personalize": False}
            api.post("/v1/chat/completions", json=plain, headers=ada_key)
            text = {"model": SMOL, "prompt": "The sky is", **short}
            api.post("/v1/completions", json=text, headers=ada_key)
            api.post("/v1/completions", json={**text, "model": "auto"}, headers=ada_key)
            # A stream is the text/event-stream the schema names for the same status.
            streamed = api.post(
                "/v1/chat/completions", json={**CHAT, **short, "stream": True}, headers=ada_key
            )
            assert streamed.text.rstrip().endswith("data: [DONE]")
            api.post("/v1/completions", json={**text, "stream": True}, headers=ada_key)
            api.post("/v1/completions", 400, json={**text, "n": 2}, headers=ada_key)
            api.post("/v1/chat/completions", 404, json={**CHAT, "model": "gpt-9"}, headers=ada_key)

            api.post(
                "/v1/feedback", 201, json={"response_id": auto["id"], "rating": 1}, headers=ada_key
            )
            state = api.get("/admin/router", headers=ADMIN)
            assert state["router"] == "eagle" and state["recent"]
        finally:
            runtime.stop()

"""Feedback, examples and fine-tune jobs through the user API, on both deployments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from storage.repositories import ExampleRepository, ResponseRepository
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, new_user, services

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]


@pytest.fixture(params=DEPLOYMENTS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path) as test_client:
        yield test_client


def logged_response(client: TestClient, user_id: str, response_id: str) -> None:
    with services(client).database.session() as session:
        ResponseRepository(session).record(
            response_id=response_id,
            user_id=user_id,
            base_model_id="smollm2-135m-instruct",
            endpoint="chat.completions",
            request={"messages": CHAT[:1]},
            output_text="hello!",
            finish_reason="stop",
            routing_decision={"model": "smollm2-135m-instruct", "reason": "forced"},
            adapters_used=[],
            prompt_tokens=5,
            completion_tokens=2,
        )


def test_feedback_counts_once_and_only_for_own_responses(client: TestClient) -> None:
    ada, ada_key = new_user(client, "ada")
    bob, bob_key = new_user(client, "bob")
    logged_response(client, ada, "chatcmpl_a1")
    logged_response(client, ada, "chatcmpl_a2")
    logged_response(client, bob, "chatcmpl_b1")

    first = client.post(
        "/v1/feedback", json={"response_id": "chatcmpl_a1", "rating": 1}, headers=ada_key
    )
    assert first.status_code == 201 and first.json()["duplicate"] is False
    again = client.post(
        "/v1/feedback", json={"response_id": "chatcmpl_a1", "rating": 1}, headers=ada_key
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    preferred = client.post(
        "/v1/feedback",
        json={"response_id": "chatcmpl_a2", "preferred_over": "chatcmpl_a1"},
        headers=ada_key,
    )
    assert preferred.status_code == 201
    # Another user's response is reported as missing, never as forbidden.
    for body in (
        {"response_id": "chatcmpl_b1", "rating": 1},
        {"response_id": "chatcmpl_a1", "preferred_over": "chatcmpl_b1"},
    ):
        assert client.post("/v1/feedback", json=body, headers=ada_key).status_code == 404
    assert (
        client.post(
            "/v1/feedback", json={"response_id": "chatcmpl_a1", "rating": 1}, headers=bob_key
        ).status_code
        == 404
    )
    for bad in (
        {"response_id": "chatcmpl_a1"},
        {"response_id": "chatcmpl_a1", "rating": 2},
        {"response_id": "chatcmpl_a1", "rating": 1, "preferred_over": "chatcmpl_a2"},
        {"response_id": "chatcmpl_a1", "preferred_over": "chatcmpl_a1"},
    ):
        response = client.post("/v1/feedback", json=bad, headers=ada_key)
        assert response.status_code == 422, bad
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_examples_as_json_and_json_lines(client: TestClient) -> None:
    _, ada_key = new_user(client, "ada")
    stored = client.post(
        "/v1/examples", json={"examples": [{"messages": CHAT}] * 3}, headers=ada_key
    )
    assert stored.status_code == 201 and stored.json() == {
        "object": "examples.created",
        "stored": 3,
        "total": 3,
    }
    lines = "\n".join(json.dumps({"messages": CHAT}) for _ in range(2)) + "\n"
    stored = client.post(
        "/v1/examples",
        content=lines,
        headers={**ada_key, "Content-Type": "application/jsonl"},
    )
    assert stored.status_code == 201 and stored.json()["total"] == 5
    page = client.get("/v1/examples?limit=4", headers=ada_key).json()
    assert page["total"] == 5 and len(page["data"]) == 4 and page["has_more"] is True
    assert page["data"][0]["messages"] == CHAT


def test_a_bad_example_is_named_and_nothing_is_stored(client: TestClient) -> None:
    ada, ada_key = new_user(client, "ada")
    good = json.dumps({"messages": CHAT})
    cases = [
        ("\n".join([good, good, "{not json", good]), "application/jsonl", "line 3"),
        ("\n".join([good, json.dumps({"messages": CHAT[:1]})]), "application/jsonl", "line 2"),
        (
            json.dumps({"examples": [{"messages": CHAT}, {"messages": []}]}),
            "application/json",
            "example 2",
        ),
        (
            json.dumps({"examples": [{"messages": [{"role": "robot", "content": "x"}]}]}),
            "application/json",
            "example 1",
        ),
        (json.dumps([{"messages": CHAT}]), "application/json", "examples"),
        ("", "application/jsonl", "no examples"),
    ]
    for body, content_type, named in cases:
        response = client.post(
            "/v1/examples", content=body, headers={**ada_key, "Content-Type": content_type}
        )
        assert response.status_code == 422, body
        assert named in response.json()["error"]["message"]
    with services(client).database.session() as session:
        assert ExampleRepository(session).count(user_id=ada) == 0


def upload_examples(client: TestClient, key: dict[str, str], count: int, tag: str = "") -> None:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"question {tag}{i}"},
                    {"role": "assistant", "content": f"answer {tag}{i}"},
                ]
            }
        )
        for i in range(count)
    ]
    response = client.post(
        "/v1/examples",
        content="\n".join(lines),
        headers={**key, "Content-Type": "application/jsonl"},
    )
    assert response.status_code == 201, response.text


def test_fine_tune_jobs_are_idempotent_private_and_cancellable(client: TestClient) -> None:
    _, ada_key = new_user(client, "ada")
    _, bob_key = new_user(client, "bob")
    upload_examples(client, ada_key, 10)
    retry = {**ada_key, "Idempotency-Key": "try-1"}
    created = client.post("/v1/fine-tunes", json={"hyperparameters": {"epochs": 2}}, headers=retry)
    assert created.status_code == 201
    job = created.json()
    assert job["status"] == "queued" and job["model"] == "smollm2-135m-instruct"
    assert job["hyperparameters"] == {"epochs": 2} and job["id"].startswith("ftjob_")
    again = client.post("/v1/fine-tunes", json={"hyperparameters": {"epochs": 2}}, headers=retry)
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    assert [j["id"] for j in client.get("/v1/fine-tunes", headers=ada_key).json()["data"]] == [
        job["id"]
    ]
    assert client.get(f"/v1/fine-tunes/{job['id']}", headers=bob_key).status_code == 404
    assert client.get(f"/v1/fine-tunes/{job['id']}/events", headers=ada_key).json()["data"] == []

    cancelled = client.post(f"/v1/fine-tunes/{job['id']}/cancel", headers=ada_key)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"/v1/fine-tunes/{job['id']}/cancel", headers=ada_key).status_code == 409
    assert client.post(f"/v1/fine-tunes/{job['id']}/cancel", headers=bob_key).status_code == 404

    assert (
        client.post("/v1/fine-tunes", json={"model": "gpt-9"}, headers=ada_key).status_code == 404
    )
    for bad in ({"hyperparameters": {"epochs": 0}}, {"hyperparameters": {"lr": 1}}, {"model": ""}):
        assert client.post("/v1/fine-tunes", json=bad, headers=ada_key).status_code in (404, 422), (
            bad
        )
    gemma = client.post("/v1/fine-tunes", json={"model": "gemma-3-270m"}, headers=ada_key)
    assert gemma.status_code == 201 and gemma.json()["model"] == "gemma-3-270m"


def test_a_job_that_could_learn_nothing_is_refused_at_once(client: TestClient) -> None:
    ada, ada_key = new_user(client, "ada")
    jobs: list[str] = []

    def queue(hyperparameters: dict[str, Any], expected: int) -> dict[str, Any]:
        response = client.post(
            "/v1/fine-tunes", json={"hyperparameters": hyperparameters}, headers=ada_key
        )
        assert response.status_code == expected, response.text
        if expected == 201:
            jobs.append(response.json()["id"])
        return dict(response.json())

    refused = queue({}, 422)["error"]
    assert refused["code"] == "invalid_training_data"
    assert "0 conversation(s)" in refused["message"] and "at least 10" in refused["message"]
    upload_examples(client, ada_key, 9)
    assert "9 conversation(s)" in queue({}, 422)["error"]["message"]
    # An admin queueing for the user hears the same.
    admin = client.post(
        "/admin/jobs", json={"model": "smollm2-135m-instruct", "user_id": ada}, headers=ADMIN
    )
    assert admin.status_code == 422 and admin.json()["error"]["code"] == "invalid_training_data"
    assert client.get("/v1/fine-tunes", headers=ada_key).json()["data"] == []

    upload_examples(client, ada_key, 1, tag="x")
    first = queue({"epochs": 2}, 201)
    with services(client).database.session() as session:
        from storage.tables import FineTuneJob, JobState

        job = session.get(FineTuneJob, first["id"])
        assert job is not None
        job.state = JobState.SUCCEEDED  # as a worker leaves it
        session.commit()
    # Same data, same hyperparameters: the same adapter again.
    again = queue({"epochs": 2}, 422)["error"]["message"]
    assert f"nothing new to learn since job {first['id']}" in again
    queue({"epochs": 3}, 201)  # other hyperparameters: a real second try
    upload_examples(client, ada_key, 1, tag="y")
    queue({"epochs": 2}, 201)  # new data
    assert len(jobs) == 3


def test_rate_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    with app_client(
        "sqlite+memory",
        tmp_path,
        server={"rate_limit_burst": 3, "rate_limit_requests_per_minute": 1},
    ) as client:
        _, ada_key = new_user(client, "ada")
        _, bob_key = new_user(client, "bob")
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        statuses = [
            client.post("/v1/chat/completions", json=body, headers=ada_key).status_code
            for _ in range(4)
        ]
        # No engine in this process (503), until the bucket runs dry (429).
        assert statuses == [503, 503, 503, 429]
        limited = client.post("/v1/chat/completions", json=body, headers=ada_key)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "rate_limit_error"
        # Another user has a bucket of their own.
        assert client.post("/v1/chat/completions", json=body, headers=bob_key).status_code == 503


def test_admins_see_every_job_cancel_retry_and_queue_generalists(client: TestClient) -> None:
    ada_id, ada_key = new_user(client, "ada")
    upload_examples(client, ada_key, 10)
    job = client.post("/v1/fine-tunes", json={}, headers=ada_key).json()
    assert client.get("/admin/jobs", headers=ada_key).status_code == 403

    listed = client.get("/admin/jobs", headers=ADMIN).json()["data"]
    assert [(j["id"], j["user_id"], j["kind"], j["trigger"]) for j in listed] == [
        (job["id"], ada_id, "specialist", "api")
    ]
    assert client.post(f"/admin/jobs/{job['id']}/retry", headers=ADMIN).status_code == 409
    cancelled = client.post(f"/admin/jobs/{job['id']}/cancel", headers=ADMIN).json()
    assert cancelled["status"] == "cancelled"
    assert client.get("/admin/jobs?state=queued", headers=ADMIN).json()["data"] == []

    retried = client.post(f"/admin/jobs/{job['id']}/retry", headers=ADMIN).json()
    assert (retried["status"], retried["error"], retried["finished_at"]) == ("queued", None, None)
    assert retried["max_attempts"] == retried["attempt"] + 3
    assert client.get(f"/v1/fine-tunes/{job['id']}", headers=ada_key).json()["status"] == "queued"

    model = listed[0]["model"]
    generalist = client.post("/admin/jobs", json={"model": model}, headers=ADMIN)
    assert generalist.status_code == 201
    body = generalist.json()
    assert (body["kind"], body["user_id"], body["trigger"]) == ("generalist", None, "admin")
    assert client.post("/admin/jobs", json={"model": "gpt-9"}, headers=ADMIN).status_code == 404
    assert client.get("/admin/jobs/ftjob_missing", headers=ADMIN).status_code == 404
    events = client.get(f"/admin/jobs/{job['id']}/events", headers=ADMIN).json()
    assert events["data"] == []

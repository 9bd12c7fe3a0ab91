"""The learning loop end to end over HTTP, with the worker process `tailor serve`
starts: upload examples, start a fine-tune, follow its events, see the new
specialist promoted and then answering the next chat."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.finetune_fixtures import MODEL, pirate_conversations
from tests.server import CPU_WORKER_SETTINGS, RunningServer, running_server, served_env

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = served_env(
        tmp_path_factory.mktemp("data"),
        ADMIN_KEY,
        TAILOR_FINETUNE_BATCH_SIZE="4",
        **CPU_WORKER_SETTINGS,
    )
    with running_server(env, timeout=120) as running:
        yield running


def test_examples_become_a_promoted_specialist_that_answers_the_next_chat(
    server: RunningServer,
) -> None:
    user = httpx.post(f"{server.url}/admin/users", json={"name": "pirate"}, headers=ADMIN).json()
    me = {"Authorization": f"Bearer {user['api_key']}"}
    stored = httpx.post(
        f"{server.url}/v1/examples",
        json={"examples": [{"messages": m} for m in pirate_conversations(24)]},
        headers=me,
    )
    assert stored.status_code in (200, 201), stored.text

    # How long to train is left to the service: sized to the data (a user gives no epochs).
    request = {"model": MODEL, "hyperparameters": {"rank": 8}}
    headers = {**me, "Idempotency-Key": "first-fine-tune"}
    job = httpx.post(f"{server.url}/v1/fine-tunes", json=request, headers=headers).json()
    again = httpx.post(f"{server.url}/v1/fine-tunes", json=request, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == job["id"]

    finished = wait_until_finished(server, me, job["id"], timeout=600)
    assert finished["status"] == "succeeded", finished
    assert finished["outcome"] == "promoted" and finished["outcome_reason"] is None
    events = httpx.get(f"{server.url}/v1/fine-tunes/{job['id']}/events", headers=me).json()["data"]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "promoted"
    progress = [e["payload"] for e in events if e["kind"] == "progress"]
    assert progress and {"step", "loss", "tokens_per_second", "eta_seconds"} <= set(progress[0])
    evaluation = next(e["payload"] for e in events if e["kind"] == "evaluation")
    assert evaluation["promote"] is True

    adapters = httpx.get(f"{server.url}/v1/adapters", headers=me).json()["data"]
    [specialist] = [a for a in adapters if a["kind"] == "specialist"]
    assert specialist["id"] == finished["adapter_id"] and specialist["state"] == "active"

    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me about a rowing boat."}],
            "max_tokens": 12,
            "temperature": 0,
        },
        headers=me,
        timeout=120,
    ).json()
    used = answer["tailor"]["adapters"]
    assert [a["version_id"] for a in used] == [finished["result_version_id"]]
    # It learnt the voice of its examples ("Arr, matey! ..."); the base model
    # answers about boats in plain English.
    assert "matey" in answer["choices"][0]["message"]["content"].lower()


def wait_until_finished(
    server: RunningServer, headers: dict[str, str], job_id: str, *, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(
            f"{server.url}/v1/fine-tunes/{job_id}", headers=headers
        ).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")

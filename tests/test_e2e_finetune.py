"""The learning loop end to end over HTTP, with the worker process `tailor serve`
starts, on a style set written for Tailor: examples, a fine-tune with no
hyperparameters, the specialist promoted by the gate and answering an unseen
prompt in the style while still knowing a plain fact; then a job on damaged data
held back with a reason the user can read, which the user promotes by hand and
rolls back."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.style_sets import STYLE_SETS, damaged
from tests.finetune_fixtures import MODEL
from tests.server import CPU_WORKER_SETTINGS, RunningServer, running_server, served_env

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The set the default training plan learns best (docs/benchmarks.md, style sets).
STYLE = STYLE_SETS["json"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = served_env(
        tmp_path_factory.mktemp("data"),
        ADMIN_KEY,
        **{
            **CPU_WORKER_SETTINGS,
            # The gate as users get it: the factual probes on (the fixtures' template
            # answers are not used here; these are real answers in a style).
            "TAILOR_FINETUNE_FACTUAL_PROBES": "30",
        },
    )
    with running_server(env, timeout=120) as running:
        yield running


# Two real jobs on a 2-core CPU (the second on 48 conversations) and the full gate.
@pytest.mark.timeout(1800)
def test_a_style_is_learnt_kept_apart_from_bad_data_and_in_the_users_hands(
    server: RunningServer,
) -> None:
    user = httpx.post(f"{server.url}/admin/users", json={"name": "styled"}, headers=ADMIN).json()
    me = {"Authorization": f"Bearer {user['api_key']}"}
    # The admin's trade-off for this user: a style may cost up to 10% of the factual
    # probes (3 of 30), where the service's default allows 1 (docs/benchmarks.md: a
    # strong style on this 135M model costs 1-4).
    limits = httpx.patch(
        f"{server.url}/admin/users/{user['id']}/fine-tuning",
        json={"max_probe_loss": 0.1},
        headers=ADMIN,
    )
    assert limits.status_code == 200 and limits.json()["effective_max_probe_loss"] == 0.1
    store(server, me, STYLE.train)

    # No hyperparameters: how long and how hard to train is sized to the data.
    headers = {**me, "Idempotency-Key": "first-fine-tune"}
    job = httpx.post(f"{server.url}/v1/fine-tunes", json={"model": MODEL}, headers=headers).json()
    again = httpx.post(f"{server.url}/v1/fine-tunes", json={"model": MODEL}, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    first = wait_until_finished(server, me, job["id"], timeout=900)
    assert first["status"] == "succeeded", first
    assert (first["outcome"], first["outcome_reason"]) == ("promoted", None)
    events = httpx.get(f"{server.url}/v1/fine-tunes/{job['id']}/events", headers=me).json()["data"]
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "promoted" and "evaluating" in kinds
    evaluation = next(e["payload"] for e in events if e["kind"] == "evaluation")
    assert evaluation["verdict"] == "promote" and evaluation["probes_asked"] == 30
    progress = [e["payload"] for e in events if e["kind"] == "progress"]
    assert any(p["validation_loss"] is not None for p in progress)

    # An unseen prompt is answered in the style; a plain fact is still known.
    unseen = chat(server, me, STYLE.held_out_prompts[1])
    assert unseen["tailor"]["adapters"][0]["version_id"] == first["result_version_id"]
    assert STYLE.shows_style(unseen["choices"][0]["message"]["content"]), unseen
    fact = chat(server, me, "What is the capital of France?")
    assert "paris" in fact["choices"][0]["message"]["content"].lower()

    # The same questions with every answer moved to another: the gate holds it back,
    # and the job says why in words the user can read.
    store(server, me, damaged(STYLE, seed=0))
    bad = httpx.post(f"{server.url}/v1/fine-tunes", json={"model": MODEL}, headers=me).json()
    second = wait_until_finished(server, me, bad["id"], timeout=900)
    assert second["status"] == "succeeded" and second["outcome"] == "held_back", second
    assert "factual probes" in second["outcome_reason"], second["outcome_reason"]
    chat_now = chat(server, me, STYLE.held_out_prompts[1])
    assert chat_now["tailor"]["adapters"][0]["version_id"] == first["result_version_id"]

    # The user overrides the gate, then thinks better of it.
    candidate = second["result_version_id"]
    promoted = httpx.post(f"{server.url}/v1/adapters/{candidate}/promote", headers=me).json()
    assert promoted["state"] == "active" and promoted["overrode_gate"] is True
    assert promoted["promoted_by"] == "user"
    overridden = chat(server, me, STYLE.held_out_prompts[1])
    assert overridden["tailor"]["adapters"][0]["version_id"] == candidate
    restored = httpx.post(f"{server.url}/v1/adapters/{candidate}/rollback", headers=me).json()
    assert restored["id"] == first["result_version_id"] and restored["state"] == "active"
    versions = httpx.get(f"{server.url}/v1/adapters", headers=me).json()["data"][0]["versions"]
    assert [(v["state"], v["retired_by"]) for v in versions] == [
        ("active", None),
        ("retired", "user"),
    ]


def store(server: RunningServer, headers: dict[str, str], conversations: Any) -> None:
    body = {"examples": [{"messages": list(c)} for c in conversations]}
    stored = httpx.post(f"{server.url}/v1/examples", json=body, headers=headers)
    assert stored.status_code in (200, 201), stored.text


def chat(server: RunningServer, headers: dict[str, str], prompt: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 96,
            "temperature": 0,
        },
        headers=headers,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


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

"""End to end over HTTP: `auto` is served by the learning router, feedback changes
later choices at once (for everyone and for each user), and a restarted server
has learnt the same."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, prepared_model_store, running_server

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
SHARED_PROMPTS = [f"Write one word about topic number {i}." for i in range(15)]
ALICE_PROMPTS = [f"Tell me a fact about animal number {i}." for i in range(12)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def server_env(data_dir: Path) -> dict[str, str]:
    return {
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY": ADMIN_KEY,
        # Quality alone decides here; cost and budget have their own tests.
        "TAILOR_ROUTER_COST_WEIGHT": "0",
        # A user's own feedback weighs n / (n + 4): a dozen pieces make it 3/4.
        "TAILOR_ROUTER_USER_PRIOR_GAMES": "4",
    }


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[RunningServer]:
    with running_server(server_env(data_dir), timeout=120) as running:
        yield running


def new_user(url: str, name: str) -> dict[str, str]:
    response = httpx.post(f"{url}/admin/users", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


def chat(url: str, user: dict[str, str], prompt: str, model: str = "auto", **extra: Any) -> Any:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 2,
            "temperature": 0,
            **extra,
        },
        headers=user,
        timeout=60,
    )
    return response


def prefer(url: str, user: dict[str, str], winner: str, loser: str, prompt: str) -> None:
    """Ask both models the same prompt and prefer ``winner``'s answer."""
    answers = {m: chat(url, user, prompt, model=m).json()["id"] for m in (winner, loser)}
    response = httpx.post(
        f"{url}/v1/feedback",
        json={"response_id": answers[winner], "preferred_over": answers[loser]},
        headers=user,
    )
    assert response.status_code == 201, response.text


def routed(url: str, user: dict[str, str], prompt: str = "Write one word about the sea.") -> Any:
    response = chat(url, user, prompt)
    assert response.status_code == 200, response.text
    return response.json()["tailor"]["route"]


def test_a_users_preference_takes_over_while_others_keep_the_global_choice(
    server: RunningServer, data_dir: Path
) -> None:
    url = server.url
    alice, bob, carol = (new_user(url, name) for name in ("alice", "bob", "carol"))
    first = routed(url, alice)
    assert (first["model"], first["reason"]) == (SMOL, "default")  # nothing learnt: the cheapest

    # Bob and Carol prefer Gemma's answers: the shared ratings follow at once.
    for user in (bob, carol):
        for prompt in SHARED_PROMPTS[:8]:
            prefer(url, user, GEMMA, SMOL, prompt)
    after = routed(url, bob)
    assert (after["model"], after["reason"]) == (GEMMA, "score")
    assert after["scores"][GEMMA] > after["scores"][SMOL]
    assert after["neighbours"]["count"] > 0
    assert set(after["candidates"]) == {SMOL, GEMMA}

    # Alice keeps preferring SmolLM2's: her own ratings take over for her only.
    for prompt in ALICE_PROMPTS:
        prefer(url, alice, SMOL, GEMMA, prompt)
    mine = routed(url, alice)
    assert mine["model"] == SMOL
    assert mine["user_weight"] == pytest.approx(12 / 16, abs=1e-3)
    assert routed(url, bob)["model"] == GEMMA
    newcomer = routed(url, new_user(url, "dave"))
    assert newcomer["user_weight"] == 0.0
    assert newcomer["model"] == GEMMA

    state = httpx.get(f"{url}/admin/router", headers=ADMIN).json()
    assert state["router"] == "eagle"
    assert state["global"][GEMMA]["games"] == 16 + 12
    assert sorted(u["feedback"] for u in state["users"]) == [8, 8, 12]
    assert state["decision_ms"]["count"] > 0 and state["decision_ms"]["p50"] > 0
    assert state["recent"][0]["model"] in (SMOL, GEMMA)
    assert state["mix"]["models"][GEMMA]["responses"] > 0

    # A user never sees which responses were the neighbours; the log (admin) does.
    assert "neighbour_responses" not in mine
    assert state["recent"][0]["neighbour_responses"]

    # Restart on the same data: the ratings are rebuilt exactly from SQL.
    before = {k: state[k] for k in ("global", "users", "last_feedback_id")}
    server.process.terminate()
    server.process.wait(timeout=30)
    with running_server(server_env(data_dir), timeout=120) as restarted:
        state = httpx.get(f"{restarted.url}/admin/router", headers=ADMIN).json()
        assert {k: state[k] for k in before} == before
        assert routed(restarted.url, alice)["model"] == SMOL


def test_feedback_rules_and_budgets_over_http(tmp_path: Path) -> None:
    with running_server(server_env(tmp_path), timeout=120) as running:
        url = running.url
        erin, frank = new_user(url, "erin"), new_user(url, "frank")
        mine = chat(url, erin, "Say hi.").json()["id"]
        other_prompt = chat(url, erin, "Say bye.").json()["id"]
        theirs = chat(url, frank, "Say hi.").json()["id"]

        def feedback(user: dict[str, str], body: dict[str, Any]) -> httpx.Response:
            return httpx.post(f"{url}/v1/feedback", json=body, headers=user)

        assert feedback(erin, {"response_id": "chatcmpl-nope", "rating": 1}).status_code == 404
        assert feedback(erin, {"response_id": theirs, "rating": 1}).status_code == 404
        assert feedback(erin, {"response_id": mine, "rating": 1}).status_code == 201
        again = feedback(erin, {"response_id": mine, "rating": 1})
        assert again.status_code == 200 and again.json()["duplicate"] is True
        different = feedback(erin, {"response_id": mine, "preferred_over": other_prompt})
        assert different.status_code == 422
        assert "different prompts" in different.json()["error"]["message"]
        state = httpx.get(f"{url}/admin/router", headers=ADMIN).json()
        assert state["global"][SMOL]["games"] == 1  # the repeated rating counted once

        # Budgets: below every price falls back to the cheapest, or is refused if strict.
        cheapest = routed_with(url, erin, max_price=1e-9)
        assert (cheapest["model"], cheapest["reason"]) == (SMOL, "budget")
        strict = chat(url, erin, "Say hi.", max_price=1e-9, strict_budget=True)
        assert strict.status_code == 400
        assert strict.json()["error"]["code"] == "budget_not_met"

        # A user's own preferences apply to their requests; a request's own win.
        patched = httpx.patch(f"{url}/v1/routing", json={"cost_weight": 2.5}, headers=erin)
        assert patched.json() == {
            "cost_weight": 2.5,
            "max_price": None,
            "latency_slo_seconds": None,
        }
        assert routed_with(url, erin)["cost_weight"] == 2.5
        assert routed_with(url, erin, cost_weight=0.25)["cost_weight"] == 0.25
        assert routed_with(url, frank)["cost_weight"] == 0.0  # the service's (this test's)
        bad = httpx.patch(f"{url}/v1/routing", json={"cost_weight": -1}, headers=erin)
        assert bad.status_code == 422
        admin_set = httpx.patch(
            f"{url}/admin/users/{user_id(url, 'frank')}/routing",
            json={"max_price": 1e-9},
            headers=ADMIN,
        )
        assert admin_set.status_code == 200
        assert routed_with(url, frank)["reason"] == "budget"
        assert httpx.get(f"{url}/admin/router", headers=erin).status_code == 403


def routed_with(url: str, user: dict[str, str], **extra: Any) -> Any:
    response = chat(url, user, "Say hi.", **extra)
    assert response.status_code == 200, response.text
    return response.json()["tailor"]["route"]


def user_id(url: str, name: str) -> str:
    users = httpx.get(f"{url}/admin/users", headers=ADMIN).json()["data"]
    return str(next(u["id"] for u in users if u["name"] == name))

"""End to end over HTTP: `auto` is served by the learning router; one user's votes move
that user's routes and nobody else's; a user's specialist keeps `auto` on its base; an admin
can reset a user's influence; a restarted server decides exactly as before."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapter_upload import upload_and_promote
from tests.server import RunningServer, prepared_model_store, running_server

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"
SHARED_PROMPTS = [f"Write one word about topic number {i}." for i in range(15)]
ALICE_PROMPTS = [f"Tell me a fact about animal number {i}." for i in range(20)]


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
        # Exploration draws per user id, which is random here: off, so that every
        # decision below is the estimate's (router unit tests cover exploration).
        "TAILOR_ROUTER_EXPLORE_RATE": "0",
    }


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[RunningServer]:
    with running_server(server_env(data_dir), timeout=120) as running:
        yield running


def new_user(url: str, name: str) -> dict[str, str]:
    response = httpx.post(f"{url}/admin/users", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['api_key']}"}


def complete(url: str, user: dict[str, str], prompt: str, model: str = "auto") -> Any:
    """A plain completion: both base models can serve it (a chat needs a chat template)."""
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": prompt, "max_tokens": 2, "temperature": 0},
        headers=user,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


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
    answers = {m: complete(url, user, prompt, model=m)["id"] for m in (winner, loser)}
    response = httpx.post(
        f"{url}/v1/feedback",
        json={"response_id": answers[winner], "preferred_over": answers[loser]},
        headers=user,
    )
    assert response.status_code == 201, response.text


def routed(
    url: str, user: dict[str, str], prompt: str = "Tell me a fact about animal number 99."
) -> Any:
    return complete(url, user, prompt)["tailor"]["route"]


def test_one_users_votes_move_only_their_routes_and_a_restart_decides_the_same(
    server: RunningServer, data_dir: Path
) -> None:
    url = server.url
    alice, bob = new_user(url, "alice"), new_user(url, "bob")
    first = routed(url, alice)
    assert (first["model"], first["reason"]) == (SMOL, "default")  # nothing learnt: the cheapest
    assert first["explored"] is False

    # One vote reroutes nobody (the first-hour failure: it used to reroute everyone).
    prefer(url, alice, GEMMA, SMOL, ALICE_PROMPTS[0])
    assert routed(url, alice)["model"] == SMOL
    assert routed(url, bob)["model"] == SMOL

    # Alice keeps preferring Gemma: her own routes follow within 20 votes, nobody else's.
    switched_after = None
    for votes, prompt in enumerate(ALICE_PROMPTS[1:], start=2):
        prefer(url, alice, GEMMA, SMOL, prompt)
        if switched_after is None and routed(url, alice)["model"] == GEMMA:
            switched_after = votes
    assert switched_after is not None and switched_after <= 20
    mine = routed(url, alice)
    assert mine["model"] == GEMMA and mine["user_feedback"] == 20
    assert mine["candidates"][GEMMA]["user_shift"] > 0 > mine["candidates"][SMOL]["user_shift"]
    assert routed(url, bob)["model"] == SMOL
    assert routed(url, new_user(url, "carol"))["model"] == SMOL
    # A chat needs a chat template: `auto` never sends one to the base model Gemma.
    chatted = chat(url, alice, "Tell me a fact about a dog.")
    assert chatted.status_code == 200 and chatted.json()["model"] == SMOL

    state = httpx.get(f"{url}/admin/router", headers=ADMIN).json()
    assert state["router"] == "eagle"
    (alice_state,) = [u for u in state["users"] if u["feedback"] == 20]
    assert alice_state["shared_weight"] < 2.0
    assert state["decision_ms"]["count"] > 0 and state["decision_ms"]["p50"] > 0
    # A user never sees which responses were the neighbours; the log (admin) does.
    assert "neighbour_responses" not in mine
    assert state["recent"][0]["neighbour_responses"]

    # Restart on the same data (the state is snapshotted at shutdown): the same state,
    # the same decisions.
    probes = [f"Tell me a fact about animal number {i}." for i in (3, 30, 77)]
    before = {k: state[k] for k in ("global", "users", "last_feedback_id")}
    decisions = {
        (name, p): routed(url, user, p) for name, user in (("a", alice), ("b", bob)) for p in probes
    }
    server.process.terminate()
    server.process.wait(timeout=30)
    assert (data_dir / "router" / "state.npz").is_file()
    with running_server(server_env(data_dir), timeout=120) as restarted:
        state = httpx.get(f"{restarted.url}/admin/router", headers=ADMIN).json()
        assert {k: state[k] for k in before} == before
        for (name, prompt), decision in decisions.items():
            again = routed(restarted.url, alice if name == "a" else bob, prompt)
            assert (again["model"], again["scores"]) == (decision["model"], decision["scores"])

        # An admin resets Alice's influence: she is back on the default, everything she
        # taught forgotten.
        alice_id = user_id(restarted.url, "alice")
        reset = httpx.post(f"{restarted.url}/admin/users/{alice_id}/routing/reset", headers=ADMIN)
        assert reset.status_code == 200, reset.text
        after = routed(restarted.url, alice)
        assert (after["model"], after["user_feedback"]) == (SMOL, 0)


def test_a_users_specialist_keeps_auto_on_its_base(tmp_path: Path) -> None:
    # Gemma answers `auto` for everyone by default; Dave's specialist lives on SmolLM2.
    env = server_env(tmp_path) | {"TAILOR_DEFAULT_MODEL": GEMMA}
    with running_server(env, timeout=120) as running:
        url = running.url
        dave = new_user(url, "dave")
        upload_and_promote(
            url, ADMIN, user_id=user_id(url, "dave"), base_model=SMOL, folder=tmp_path / "peft"
        )
        other = routed(url, new_user(url, "erin"), SHARED_PROMPTS[3])
        assert (other["model"], other["reason"]) == (GEMMA, "default")
        kept = complete(url, dave, SHARED_PROMPTS[3])
        route = kept["tailor"]["route"]
        assert (route["model"], route["reason"], route["incumbent"]) == (SMOL, "expert", SMOL)
        assert route["experts"][SMOL]["specialist_version_id"]
        assert [a["kind"] for a in kept["tailor"]["adapters"]] == ["specialist"]
        # Without personalisation there is no specialist to stay with.
        plain = httpx.post(
            f"{url}/v1/completions",
            json={
                "model": "auto",
                "prompt": SHARED_PROMPTS[3],
                "max_tokens": 2,
                "personalize": False,
            },
            headers=dave,
            timeout=60,
        ).json()
        assert plain["tailor"]["route"]["model"] == GEMMA


def test_the_router_explores_and_recovers_when_the_preferred_model_starts_failing(
    tmp_path: Path,
) -> None:
    # Exploration on, generously (rate 0.5, any regret). Each request's draw is its own
    # (keyed on a random user id), and the estimate may turn to SmolLM2 on its own after
    # about 10 ratings, so the phase runs 30 requests and then, up to 60, until one of
    # them explored (both ways happen: before the turn SmolLM2 is explored, after it
    # Gemma; a CI run once explored in none of 30).
    env = server_env(tmp_path) | {
        "TAILOR_ROUTER_EXPLORE_RATE": "0.5",
        "TAILOR_ROUTER_EXPLORE_MAX_REGRET": "1",
    }
    with running_server(env, timeout=120) as running:
        url = running.url

        def rate(user: dict[str, str], response_id: str, rating: int) -> None:
            answer = httpx.post(
                f"{url}/v1/feedback",
                json={"response_id": response_id, "rating": rating},
                headers=user,
            )
            assert answer.status_code == 201, answer.text

        # Many users find Gemma's answers good and SmolLM2's bad.
        for i, prompt in enumerate(SHARED_PROMPTS[:12]):
            user = new_user(url, f"early-{i}")
            rate(user, complete(url, user, prompt, model=GEMMA)["id"], 1)
            rate(user, complete(url, user, prompt, model=SMOL)["id"], -1)
        assert routed(url, new_user(url, "probe-1"), SHARED_PROMPTS[14])["model"] == GEMMA

        # Then Gemma starts failing: every answer `auto` gives is rated by what it is.
        explored = 0
        for i in range(60):
            if i >= 30 and explored:
                break
            user = new_user(url, f"late-{i}")
            answer = complete(url, user, SHARED_PROMPTS[i % 12])
            route = answer["tailor"]["route"]
            explored += route["explored"]
            rate(user, answer["id"], 1 if route["model"] == SMOL else -1)
        assert explored > 0
        # Recovered: the estimate now prefers SmolLM2 (whatever this one request's
        # exploration draw, its estimate says so).
        final = routed(url, new_user(url, "probe-2"), SHARED_PROMPTS[14])
        assert final["candidates"][SMOL]["quality"] > final["candidates"][GEMMA]["quality"]


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
        assert [u["feedback"] for u in state["users"]] == [1]

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

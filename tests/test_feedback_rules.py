"""Bad feedback over HTTP, on both deployments: one vote per response rated and
per pair compared, whatever the user sends (issue 16, "Bad input").

Refused feedback must leave the stored rows and the router's learnt state as
they were; a live learning router (with a stand-in embedder) is attached to the
app so that its applied feedback can be read from ``GET /admin/router``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response as HttpResponse

from router import EagleRouter
from router.state_sync import embedding_bytes
from serving.runtime import ModelRuntime
from storage.database import Database
from storage.errors import Conflict
from storage.repositories import FeedbackRepository
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer
from tests.logged_responses import log_response
from tests.test_repositories import add_base_model, add_user
from tests.test_router_eagle import TopicEmbedder

SMOL, GEMMA = "smollm2-135m-instruct", "gemma-3-270m"


@pytest.fixture(params=DEPLOYMENTS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path) as test_client:
        services = test_client.app.state.services  # type: ignore[attr-defined]
        # The route syncs this router before it answers, as in a process that hosts models.
        router = EagleRouter([SMOL, GEMMA], TopicEmbedder())
        test_client.app.state.runtime = ModelRuntime(services, router=router)  # type: ignore[attr-defined]
        yield test_client


def db_of(client: TestClient) -> Database:
    db: Database = client.app.state.services.database  # type: ignore[attr-defined]
    return db


def new_user(client: TestClient, name: str) -> tuple[str, dict[str, str]]:
    response = client.post("/admin/users", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], bearer(body["api_key"])


def logged_response(
    db: Database, user_id: str, response_id: str, prompt: str = "hi", model: str = SMOL
) -> str:
    # An embedding, so that the router learns from the feedback in context too.
    embedding = embedding_bytes(TopicEmbedder().embed(prompt))
    return log_response(
        db, user_id, model, prompt, response_id=response_id, query_embedding=embedding
    )


def feedback(client: TestClient, key: dict[str, str], **body: Any) -> HttpResponse:
    return client.post("/v1/feedback", json=body, headers=key)


def stored(client: TestClient, user_id: str) -> int:
    with db_of(client).session() as session:
        return FeedbackRepository(session).count(user_id=user_id)


def learnt(client: TestClient) -> dict[str, Any]:
    """What the router has learnt (the last feedback id it applied, its global
    and per-user state), as the admin API shows it."""
    state = client.get("/admin/router", headers=ADMIN).json()
    assert state["router"] == "eagle"
    return {key: state[key] for key in ("last_feedback_id", "global", "users")}


def conflict(response: HttpResponse) -> str:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("conflict_error", "feedback_conflict")
    message: str = error["message"]
    return message


def test_feedback_is_only_for_the_callers_own_known_responses(client: TestClient) -> None:
    ada, ada_key = new_user(client, "ada")
    bob, _ = new_user(client, "bob")
    mine = logged_response(db_of(client), ada, "chatcmpl_a1")
    theirs = logged_response(db_of(client), bob, "chatcmpl_b1")
    for body in (
        {"response_id": theirs, "rating": 1},
        {"response_id": "chatcmpl_nope", "rating": 1},
        {"response_id": mine, "preferred_over": theirs},
        {"response_id": theirs, "preferred_over": mine},
        {"response_id": mine, "preferred_over": "chatcmpl_nope"},
    ):
        response = feedback(client, ada_key, **body)
        assert response.status_code == 404, body
        assert response.json()["error"]["code"] == "not_found"
    assert stored(client, ada) == stored(client, bob) == 0
    assert learnt(client)["last_feedback_id"] == 0


def test_a_response_is_rated_once(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    rid = logged_response(db_of(client), ada, "chatcmpl_a1")
    untaught = learnt(client)
    first = feedback(client, key, response_id=rid, rating=1)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    before = learnt(client)
    # The router is live: a vote it takes shows, so an unchanged state means something.
    assert before["last_feedback_id"] == first.json()["id"]
    assert before["global"] != untaught["global"]

    again = feedback(client, key, response_id=rid, rating=1)
    assert again.status_code == 200
    assert again.json()["duplicate"] is True and again.json()["id"] == first.json()["id"]

    for other in (-1, 0):
        message = conflict(feedback(client, key, response_id=rid, rating=other))
        assert message == f"response {rid} was already rated +1; a response is rated once"
    assert stored(client, ada) == 1
    assert learnt(client) == before

    # Each response has its own vote: a second response can still be rated -1.
    other_rid = logged_response(db_of(client), ada, "chatcmpl_a2")
    second = feedback(client, key, response_id=other_rid, rating=-1)
    assert second.status_code == 201
    assert stored(client, ada) == 2
    assert learnt(client)["last_feedback_id"] == second.json()["id"]


def test_a_neutral_rating_is_named_in_the_refusal(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    rid = logged_response(db_of(client), ada, "chatcmpl_a1")
    assert feedback(client, key, response_id=rid, rating=0).status_code == 201
    message = conflict(feedback(client, key, response_id=rid, rating=-1))
    assert "already rated 0;" in message


def test_a_pair_is_compared_once_in_either_order(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    db = db_of(client)
    a = logged_response(db, ada, "chatcmpl_a", prompt="same question", model=SMOL)
    b = logged_response(db, ada, "chatcmpl_b", prompt="same question", model=GEMMA)
    first = feedback(client, key, response_id=a, preferred_over=b)
    assert first.status_code == 201
    before = learnt(client)
    assert before["last_feedback_id"] == first.json()["id"]

    again = feedback(client, key, response_id=a, preferred_over=b)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    message = conflict(feedback(client, key, response_id=b, preferred_over=a))
    assert message == (
        f"response {a} was already preferred over {b}; a pair of responses is compared once"
    )
    assert stored(client, ada) == 1
    assert learnt(client) == before

    # A rating is a vote of another kind: rating a compared response is allowed.
    assert feedback(client, key, response_id=b, rating=1).status_code == 201
    assert stored(client, ada) == 2


def test_another_users_votes_do_not_conflict_with_mine(client: TestClient) -> None:
    ada, ada_key = new_user(client, "ada")
    bob, bob_key = new_user(client, "bob")
    db = db_of(client)
    a1, a2 = (logged_response(db, ada, f"chatcmpl_a{i}", prompt="q") for i in (1, 2))
    b1, b2 = (logged_response(db, bob, f"chatcmpl_b{i}", prompt="q") for i in (1, 2))
    assert feedback(client, ada_key, response_id=a1, preferred_over=a2).status_code == 201
    assert feedback(client, bob_key, response_id=b2, preferred_over=b1).status_code == 201
    assert feedback(client, ada_key, response_id=a1, rating=1).status_code == 201
    assert feedback(client, bob_key, response_id=b1, rating=-1).status_code == 201
    assert stored(client, ada) == stored(client, bob) == 2


def test_a_preference_between_different_prompts_is_refused(client: TestClient) -> None:
    ada, key = new_user(client, "ada")
    db = db_of(client)
    a = logged_response(db, ada, "chatcmpl_a", prompt="one question")
    b = logged_response(db, ada, "chatcmpl_b", prompt="another question")
    response = feedback(client, key, response_id=a, preferred_over=b)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert stored(client, ada) == 0
    assert learnt(client)["last_feedback_id"] == 0


@pytest.mark.parametrize("kind", ["rating", "preference"])
def test_of_two_concurrent_contradicting_votes_one_is_stored(database: Database, kind: str) -> None:
    """The second vote waits for the first writer and then sees its vote.

    The first vote's transaction is held open (it has the feedback lock) while
    the second runs in a thread: on PostgreSQL the second has already passed the
    unlocked duplicate check and waits on the advisory lock; on SQLite it waits
    for the one writer. Either way it must then be refused, not stored.
    """
    add_base_model(database, SMOL, 1_000_000)
    user = add_user(database, "ada")
    a = logged_response(database, user, "chatcmpl_a", prompt="q")
    b = logged_response(database, user, "chatcmpl_b", prompt="q")
    first: dict[str, Any]
    second: dict[str, Any]
    if kind == "rating":
        first, second = {"response_id": a, "rating": 1}, {"response_id": a, "rating": -1}
    else:
        first = {"response_id": a, "preferred_over_id": b}
        second = {"response_id": b, "preferred_over_id": a}

    outcome: list[BaseException | None] = []

    def vote() -> None:
        try:
            with database.session() as session:
                FeedbackRepository(session).record(user_id=user, **second)
            outcome.append(None)
        except BaseException as exc:  # reported to the test thread
            outcome.append(exc)

    holder = database.new_session()
    try:
        _, new = FeedbackRepository(holder).record(user_id=user, **first)
        assert new
        racer = threading.Thread(target=vote)
        racer.start()
        time.sleep(0.5)
        assert racer.is_alive(), "the second vote did not wait for the first writer"
        holder.commit()
    finally:
        holder.close()
    racer.join(timeout=15)
    assert not racer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    with database.session() as session:
        assert FeedbackRepository(session).count(user_id=user) == 1

"""The router's state from SQL (SQLite and PostgreSQL): replay, catch-up, and the
feedback rules the router relies on (same prompt, order of ids)."""

from __future__ import annotations

import threading

import pytest

from router import Candidate, EagleRouter, RouterConfig, RouteRequest
from router.state_sync import embedding_bytes, relearn_lengths, sync_feedback
from storage.database import Database
from storage.errors import InvalidInput, NotFound
from storage.repositories import FeedbackRepository, UserRepository
from tests.logged_responses import log_response
from tests.test_repositories import add_base_model, add_user
from tests.test_router_eagle import TopicEmbedder

SMALL, LARGE = "small-1m", "large-4m"
CANDIDATES = [Candidate(SMALL, 1.0, True), Candidate(LARGE, 4.0, True)]


@pytest.fixture
def models(database: Database) -> Database:
    add_base_model(database, SMALL, 1_000_000)
    add_base_model(database, LARGE, 4_000_000)
    return database


def respond(
    database: Database, user_id: str, model: str, prompt: str, *, completion_tokens: int = 7
) -> str:
    embedding = embedding_bytes(TopicEmbedder().embed(prompt))
    return log_response(
        database,
        user_id,
        model,
        prompt,
        query_embedding=embedding,
        completion_tokens=completion_tokens,
    )


def prefer(database: Database, user_id: str, winner: str, loser: str) -> None:
    with database.session() as session:
        FeedbackRepository(session).record(
            user_id=user_id, response_id=winner, preferred_over_id=loser
        )


def new_router() -> EagleRouter:
    return EagleRouter([SMALL, LARGE], TopicEmbedder(), config=RouterConfig(cost_weight=0.0))


def test_a_restarted_router_has_exactly_the_state_it_had(models: Database) -> None:
    database = models
    users = [add_user(database, name) for name in ("ann", "bob")]
    live = new_router()
    for i in range(12):
        user = users[i % 2]
        prompt = ("math: sum", "code: sort")[i % 2] + f" {i}"
        small, large = (respond(database, user, m, prompt) for m in (SMALL, LARGE))
        winner, loser = (large, small) if i % 2 == 0 else (small, large)
        prefer(database, user, winner, loser)
        with database.session() as session:
            FeedbackRepository(session).record(user_id=user, response_id=winner, rating=1)
        # Live: each piece is applied as soon as it is stored.
        assert sync_feedback(live, database) == 2

    restarted = new_router()
    assert sync_feedback(restarted, database) == 24
    assert restarted.last_feedback_id == live.last_feedback_id
    assert restarted.state()["global"] == live.state()["global"]
    assert restarted.state()["users"] == live.state()["users"]
    for text in ("math: sum 99", "code: sort 99"):
        request = RouteRequest(user_id=users[0], prompt_text=text, prompt_tokens=5, max_tokens=20)
        assert restarted.route(request, CANDIDATES).scores == live.route(request, CANDIDATES).scores
    # Ann's own votes moved her routes; two users' votes are not enough for everyone's.
    for user, expected in ((users[0], LARGE), ("x", SMALL)):
        request = RouteRequest(
            user_id=user, prompt_text="math: sum 7", prompt_tokens=5, max_tokens=20, explore=False
        )
        assert live.route(request, CANDIDATES).model == expected
        assert restarted.route(request, CANDIDATES).model == expected
    # Nothing new: nothing applied.
    assert sync_feedback(restarted, database) == 0


def test_output_lengths_are_relearnt_from_the_stored_responses(models: Database) -> None:
    user = add_user(models, "carol")
    for i in range(20):
        respond(models, user, LARGE, f"poem {i}", completion_tokens=80)
    router = new_router()
    assert relearn_lengths(router, models) == 20
    vector = TopicEmbedder().embed("poem 3")
    assert router.lengths.predict(LARGE, vector, prompt_tokens=5, max_tokens=200) > 50


def test_a_preference_between_answers_to_different_prompts_is_refused(
    models: Database,
) -> None:
    user = add_user(models, "dan")
    a = respond(models, user, SMALL, "math: one")
    b = respond(models, user, LARGE, "math: two")
    with pytest.raises(InvalidInput, match="different prompts"):
        prefer(models, user, a, b)
    with models.session() as session:
        assert FeedbackRepository(session).count(user_id=user) == 0


def test_feedback_on_another_users_response_is_not_found(models: Database) -> None:
    owner, other = add_user(models, "erin"), add_user(models, "finn")
    response = respond(models, owner, SMALL, "hello")
    with pytest.raises(NotFound), models.session() as session:
        FeedbackRepository(session).record(user_id=other, response_id=response, rating=1)


def test_feedback_from_concurrent_writers_is_seen_in_id_order(models: Database) -> None:
    """Readers that follow "after the last id" miss nothing while writers race."""
    user = add_user(models, "gina")
    responses = [respond(models, user, (SMALL, LARGE)[i % 2], f"q {i}") for i in range(40)]
    router = new_router()
    errors: list[BaseException] = []

    def write(chunk: list[str]) -> None:
        try:
            for response in chunk:
                with models.session() as session:
                    FeedbackRepository(session).record(user_id=user, response_id=response, rating=1)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(responses[i::4],)) for i in range(4)]
    for writer in writers:
        writer.start()
    seen = 0
    while any(w.is_alive() for w in writers):
        seen += sync_feedback(router, models)
    for writer in writers:
        writer.join()
    seen += sync_feedback(router, models)
    assert not errors
    assert seen == 40
    assert sum(router.games.values()) == 80  # each rating: one game, two models


def test_routing_preferences_are_set_cleared_and_checked(models: Database) -> None:
    user = add_user(models, "hal")
    with models.session() as session:
        users = UserRepository(session)
        users.set_routing_preferences(user_id=user, changes={"cost_weight": 0.5, "max_price": 2})
        users.set_routing_preferences(user_id=user, changes={"max_price": None})
        row = users.get(user_id=user)
        assert (row.route_cost_weight, row.route_max_price) == (0.5, None)
        with pytest.raises(ValueError, match="unknown"):
            users.set_routing_preferences(user_id=user, changes={"lambda": 1.0})
        with pytest.raises(ValueError, match="positive"):
            users.set_routing_preferences(user_id=user, changes={"latency_slo_seconds": 0})

"""The learning router's decisions: ratings, per-user blend, cost, budget, load."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from router import (
    BudgetNotMet,
    Candidate,
    EagleRouter,
    FeedbackEvent,
    NoRoute,
    RouterConfig,
    RouteRequest,
    RoutingDecision,
)
from router.load import LoadTracker

SMALL, LARGE = "small", "large"
CANDIDATES = [
    Candidate(SMALL, cost_per_million_tokens=1.0, chat=True),
    Candidate(LARGE, cost_per_million_tokens=4.0, chat=True),
]
TOPICS = ("math", "code", "poem")


class TopicEmbedder:
    """Queries about the same topic embed close together (a stand-in for MiniLM
    where the test needs to know which queries are neighbours)."""

    name = "topics"
    dimensions = 8

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        self.calls += 1
        vector = np.full(self.dimensions, 0.01, dtype=np.float32)
        for i, topic in enumerate(TOPICS):
            if topic in text:
                vector[i] = 1.0
        vector[len(TOPICS) + len(text) % 4] += 0.05  # near, not identical
        normalised: npt.NDArray[np.float32] = vector / np.linalg.norm(vector)
        return normalised


def make_router(**config: Any) -> EagleRouter:
    return EagleRouter(
        [SMALL, LARGE],
        TopicEmbedder(),
        config=RouterConfig(**config),
        load=LoadTracker(default_capacity=4),
    )


def ask(router: EagleRouter, text: str, user: str = "u1", **limits: Any) -> str:
    return route(router, text, user, **limits).model


def route(router: EagleRouter, text: str, user: str = "u1", **limits: Any) -> RoutingDecision:
    request = RouteRequest(
        user_id=user, prompt_text=text, prompt_tokens=20, max_tokens=100, **limits
    )
    return router.route(request, CANDIDATES)


_ids = itertools.count(1)


def feedback(
    router: EagleRouter,
    text: str,
    *,
    winner: str,
    loser: str,
    user: str = "u1",
    times: int = 1,
) -> None:
    for _ in range(times):
        router.apply_feedback(
            FeedbackEvent(
                feedback_id=next(_ids),
                user_id=user,
                model=winner,
                other_model=loser,
                vector=router.embedder.embed(text),
            )
        )


def test_without_feedback_the_default_model_answers_else_the_cheapest() -> None:
    router = make_router()
    decision = route(router, "a math question")
    assert (decision.model, decision.reason) == (SMALL, "default")
    router.default_model = LARGE
    assert ask(router, "a math question") == LARGE


def test_a_forced_model_is_kept_and_an_unknown_one_refused() -> None:
    router = make_router()
    assert route(router, "x", requested_model=LARGE).reason == "forced"
    with pytest.raises(NoRoute, match="unknown model"):
        route(router, "x", requested_model="nope")


def test_preferences_move_later_choices_per_topic() -> None:
    router = make_router(global_weight=0.1, cost_weight=0.0)
    feedback(router, "math: integrate x", winner=LARGE, loser=SMALL, times=6)
    feedback(router, "code: reverse a list", winner=SMALL, loser=LARGE, times=6)
    feedback(router, "math: solve for y", winner=LARGE, loser=SMALL, times=1)
    math, code = route(router, "math: prove it"), route(router, "code: a parser")
    assert (math.model, math.reason) == (LARGE, "score")
    assert (code.model, code.reason) == (SMALL, "score")
    assert math.scores[LARGE] > math.scores[SMALL]


def test_a_rating_is_a_game_against_every_other_model() -> None:
    for rating, expected in ((1, LARGE), (-1, SMALL)):
        # ELO only (beta 0): no embedding was kept, so only the global ELO learns.
        router = make_router(cost_weight=0.0, quality_weight=0.0)
        router.apply_feedback(
            FeedbackEvent(
                feedback_id=1, user_id="u", model=LARGE, rating=rating, vector=None, response_id="r"
            )
        )
        assert router.eagle.global_elo[LARGE] != router.eagle.global_elo[SMALL]
        assert ask(router, "anything") == expected


def test_the_same_feedback_id_counts_once() -> None:
    router = make_router()
    event = FeedbackEvent(feedback_id=5, user_id="u", model=LARGE, rating=1)
    assert router.apply_feedback(event) is True
    ratings = dict(router.eagle.global_elo.ratings)
    assert router.apply_feedback(event) is False
    assert (
        router.apply_feedback(FeedbackEvent(feedback_id=4, user_id="u", model=SMALL, rating=1))
        is False
    )
    assert router.eagle.global_elo.ratings == ratings


def test_a_users_own_preference_takes_over_and_new_users_get_the_global_choice() -> None:
    router = make_router(cost_weight=0.0, user_prior_games=10)
    for user in ("b", "c"):
        feedback(router, "poem about rain", winner=LARGE, loser=SMALL, user=user, times=10)
    assert ask(router, "poem about snow", user="a") == LARGE
    feedback(router, "poem about sun", winner=SMALL, loser=LARGE, user="a", times=4)
    # Four pieces of feedback weigh 4 / 14: not yet enough against twenty.
    assert ask(router, "poem about snow", user="a") == LARGE
    feedback(router, "poem about sun", winner=SMALL, loser=LARGE, user="a", times=16)
    decision = route(router, "poem about snow", user="a")
    assert decision.model == SMALL
    assert decision.details["user_weight"] == pytest.approx(20 / 30, abs=1e-3)
    assert ask(router, "poem about snow", user="b") == LARGE
    newcomer = route(router, "poem about snow", user="new")
    assert newcomer.details["user_weight"] == 0.0
    # The newcomer's choice is what the shared ratings alone say.
    shared = router.eagle.scores(router.embedder.embed("poem about snow"))[0]
    assert newcomer.model == max(shared, key=lambda m: shared[m])


def test_the_quality_model_learns_per_topic_from_ratings() -> None:
    # beta 1: the shared quality is the quality model's prediction alone.
    router = make_router(cost_weight=0.0, quality_weight=1.0)
    for i in range(6):
        for topic, good in (("math", LARGE), ("code", SMALL)):
            for model in (LARGE, SMALL):
                router.apply_feedback(
                    FeedbackEvent(
                        feedback_id=next(_ids),
                        user_id="u",
                        model=model,
                        rating=1 if model == good else -1,
                        vector=router.embedder.embed(f"{topic}: exercise {i}"),
                    )
                )
    for topic, good, bad in (("math", LARGE, SMALL), ("code", SMALL, LARGE)):
        decision = route(router, f"{topic}: one more", user="someone-else")
        predicted = {m: c["predicted_quality"] for m, c in decision.details["candidates"].items()}
        assert predicted[good] > 0.7 > 0.3 > predicted[bad]
        assert decision.model == good


def test_the_cost_weight_trades_quality_for_price() -> None:
    router = make_router()
    feedback(router, "math: a sum", winner=LARGE, loser=SMALL, times=3)
    assert ask(router, "math: a sum", cost_weight=0.0) == LARGE
    cheap = route(router, "math: a sum", cost_weight=5.0)
    assert (cheap.model, cheap.reason) == (SMALL, "cost")
    assert cheap.details["cost_weight"] == 5.0


def test_a_price_ceiling_is_kept_or_falls_back_to_the_cheapest() -> None:
    router = make_router(cost_weight=0.0)
    feedback(router, "math: a sum", winner=LARGE, loser=SMALL, times=3)
    assert ask(router, "math: a sum", max_price_per_million=2.0) == SMALL
    below_all = route(router, "math: a sum", max_price_per_million=0.5)
    assert (below_all.model, below_all.reason) == (SMALL, "budget")
    with pytest.raises(BudgetNotMet, match=r"at most 0\.5"):
        route(router, "math: a sum", max_price_per_million=0.5, strict_budget=True)


def test_a_saturated_model_is_avoided_when_a_near_equal_one_is_free() -> None:
    # ELO only (beta 0): one game makes the two near-equal.
    router = make_router(cost_weight=0.0, near_equal_margin=0.2, quality_weight=0.0)
    feedback(router, "math: a sum", winner=LARGE, loser=SMALL, times=1)
    assert ask(router, "math: a sum") == LARGE
    tickets = [router.load.started(LARGE, 50) for _ in range(4)]
    busy = route(router, "math: a sum")
    assert (busy.model, busy.reason) == (SMALL, "load")
    assert busy.details["candidates"][LARGE]["in_flight"] == 4
    for ticket in tickets:
        router.load.finished(ticket)
    assert ask(router, "math: a sum") == LARGE


def test_load_does_not_buy_a_much_worse_model() -> None:
    router = make_router(cost_weight=0.0, near_equal_margin=0.05)
    feedback(router, "math: a sum", winner=LARGE, loser=SMALL, times=10)
    for _ in range(4):
        router.load.started(LARGE, 50)
    assert ask(router, "math: a sum") == LARGE


def test_a_latency_objective_moves_a_request_off_a_slow_model() -> None:
    router = make_router(
        cost_weight=0.0, near_equal_margin=0.2, latency_slo_seconds=None, quality_weight=0.0
    )
    feedback(router, "math: a sum", winner=LARGE, loser=SMALL, times=1)
    for model, seconds in ((LARGE, 50.0), (SMALL, 0.1)):
        for _ in range(20):
            done = router.load.started(model, 10)
            router.load.finished(
                done, first_token_seconds=seconds / 10, total_seconds=seconds, completion_tokens=10
            )
    assert ask(router, "math: a sum") == LARGE  # no objective: quality decides
    moved = route(router, "math: a sum", latency_slo_seconds=2.0)
    assert (moved.model, moved.reason) == (SMALL, "load")
    assert moved.details["candidates"][LARGE]["predicted_latency_s"] > 2.0


def test_every_decision_explains_itself() -> None:
    router = make_router()
    feedback(router, "code: a parser", winner=SMALL, loser=LARGE, times=2)
    decision = route(router, "code: a lexer")
    public = decision.public()
    assert set(public["candidates"]) == {SMALL, LARGE}
    assert {"quality", "utility", "predicted_tokens", "expected_cost", "in_flight"} <= set(
        public["candidates"][SMALL]
    )
    assert public["neighbours"]["count"] == 2
    assert public["decision_ms"] > 0
    # Which past responses were neighbours is for admins only.
    assert "neighbour_responses" not in public
    assert len(decision.logged()["neighbour_responses"]) == 2
    assert router.state()["recent"][0]["model"] == decision.model


def test_replaying_the_same_feedback_rebuilds_the_same_state() -> None:
    events = [
        FeedbackEvent(
            feedback_id=i + 1,
            user_id=f"u{i % 3}",
            model=(SMALL, LARGE)[i % 2],
            other_model=(LARGE, SMALL)[i % 2] if i % 3 else None,
            rating=None if i % 3 else (1, -1, 0)[i % 3],
            vector=TopicEmbedder().embed(f"{TOPICS[i % 3]} {i}"),
            response_id=f"r{i}",
        )
        for i in range(30)
    ]
    first, second = make_router(), make_router()
    for event in events:
        first.apply_feedback(event)
    for event in events:
        second.apply_feedback(event)
    assert first.state()["global"] == second.state()["global"]
    assert first.state()["users"] == second.state()["users"]
    for text in ("math 1", "code 2", "poem 3"):
        assert route(first, text).scores == route(second, text).scores


def test_output_lengths_are_learnt_and_used_for_expected_cost() -> None:
    router = make_router()
    vector = router.embedder.embed("poem about the sea")
    for _ in range(30):
        router.observe_length(LARGE, vector, prompt_tokens=20, completion_tokens=90)
        router.observe_length(SMALL, vector, prompt_tokens=20, completion_tokens=5)
    decision = route(router, "poem about the sea")
    candidates = decision.details["candidates"]
    assert candidates[LARGE]["predicted_tokens"] > 60
    assert candidates[SMALL]["predicted_tokens"] < 10
    assert candidates[LARGE]["expected_cost"] == pytest.approx(
        4.0 * (20 + candidates[LARGE]["predicted_tokens"]) / 1e6
    )


def test_bad_configuration_is_refused() -> None:
    for bad in (
        {"global_weight": 1.5},
        {"neighbours": 0},
        {"k": 0},
        {"cost_weight": -1},
        {"latency_slo_seconds": 0},
    ):
        with pytest.raises(ValueError):
            RouterConfig(**bad)

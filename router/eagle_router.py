"""The learning router: Eagle's ratings, each user's own, cost, and load.

For a request it:
1. embeds the query (MiniLM) and finds the N nearest past queries that got feedback;
2. rates each candidate: P * global ELO + (1 - P) * local ELO replayed from
   those neighbours, read as a quality in [0, 1] (the mean win probability
   against the other candidates);
3. blends that with the quality model's prediction for this query (beta), then
   with the win probability from the user's own ELO (the user's weight), and
   subtracts lambda * expected cost / the dearest expected cost, the expected
   cost using the predicted output length;
4. keeps to the caller's price ceiling (else the cheapest, reason ``budget``),
   and moves off a model that is saturated or would miss the latency
   objective when a near-equal one would not (reason ``load``).

Feedback updates the state at once (O(pairs) on the ratings, O(d^2) on the
quality model, an append to the neighbour memory, which the local ELO and the
quality model share row for row, so one search serves both); replaying the
same feedback in the same order rebuilds it exactly. Thread-safe: requests
are routed on many threads while feedback arrives.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router.config import RouterConfig
from router.decision import Candidate, RouteRequest, RoutingDecision
from router.elo import EagleRatings, Outcome, pairwise_outcomes, win_probability_vs_field
from router.errors import BudgetNotMet, NoRoute
from router.feedback_outcomes import FeedbackEvent, outcomes_for, rewards_for
from router.length_predictor import OutputLengthPredictor
from router.load import LoadTracker, ModelLoad
from router.quality_model import NeighbourCorrection, QualityModel, QualityModelConfig
from router.query_embedder import Embedder
from router.user_ratings import UserRatings

# Responses show this many neighbours' similarities; the log keeps all N.
SHOWN_NEIGHBOURS = 5


@dataclass(frozen=True)
class _Scored:
    candidate: Candidate
    rating: float
    predicted_quality: float
    quality: float
    predicted_tokens: int
    expected_cost: float
    utility: float
    load: ModelLoad
    predicted_latency: float

    @property
    def model(self) -> str:
        return self.candidate.model


class EagleRouter:
    def __init__(
        self,
        models: Sequence[str],
        embedder: Embedder,
        *,
        config: RouterConfig | None = None,
        load: LoadTracker | None = None,
        default_model: str | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self.models = sorted(models)
        self.embedder = embedder
        self.default_model = default_model
        self.load = load or LoadTracker()
        c = self.config
        self.eagle = EagleRatings(
            self.models,
            embedder.dimensions,
            global_weight=c.global_weight,
            neighbours=c.neighbours,
            k=c.k,
            initial=c.initial_rating,
        )
        self.users = UserRatings(
            self.models, k=c.k, initial=c.initial_rating, prior_games=c.user_prior_games
        )
        self.quality = QualityModel(
            self.models,
            embedder.dimensions,
            QualityModelConfig(
                penalty=c.quality_penalty,
                correction=NeighbourCorrection(
                    neighbours=c.quality_memory_neighbours,
                    bandwidth=c.quality_memory_bandwidth,
                    prior_weight=c.quality_memory_prior_weight,
                ),
            ),
        )
        self.lengths = OutputLengthPredictor(embedder.dimensions)
        self.last_feedback_id = 0
        self.games: Counter[str] = Counter()
        # Per entry of the neighbour index: the response and user it came from.
        self._sources: list[tuple[str | None, str]] = []
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=c.recent_decisions)
        self.decision_seconds: deque[float] = deque(maxlen=10_000)

    # Learning ------------------------------------------------------------------

    def apply_feedback(self, event: FeedbackEvent) -> bool:
        """Learn from one piece of feedback; False when it was applied before.

        Events must come in feedback-id order (the order they were stored), so
        that a replay after a restart gives exactly the same ratings.
        """
        outcomes = outcomes_for(event, self.models)
        rewards = rewards_for(event, self.models)
        with self._lock:
            if event.feedback_id <= self.last_feedback_id:
                return False
            self.last_feedback_id = event.feedback_id
            if not rewards:
                return True
            if event.vector is not None:
                self._remember(event.vector, outcomes, rewards, (event.response_id, event.user_id))
            else:
                # No embedding was kept for this response: it can only teach the global ELO.
                self.eagle.global_elo.apply(outcomes)
            self.users.observe(event.user_id, outcomes)
            self._count(outcomes)
        return True

    def seed(self, vector: npt.ArrayLike, scores: Mapping[str, float]) -> None:
        """Learn from a labelled query that is not a user's feedback (an offline data
        set such as dcrouter, or a benchmark): each model's score in [0, 1] on it."""
        known = {m: float(v) for m, v in scores.items() if m in self.models}
        if not known:
            raise ValueError("scores name none of the router's models")
        outcomes = pairwise_outcomes(known, draws=False)
        with self._lock:
            self._remember(vector, outcomes, known, (None, ""))
            self._count(outcomes)

    def _remember(
        self,
        vector: npt.ArrayLike,
        outcomes: Sequence[Outcome],
        rewards: Mapping[str, float],
        source: tuple[str | None, str],
    ) -> None:
        # One row each in the local ELO's memory and the quality model's: the two
        # stay aligned, so one neighbour search serves both.
        self.quality.observe_rewards(vector, rewards)
        self.eagle.observe(vector, outcomes)
        self._sources.append(source)

    def _count(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.games[outcome.winner] += 1
            self.games[outcome.loser] += 1

    def skip_feedback(self, feedback_id: int) -> None:
        """Move past feedback that teaches nothing, keeping the id order."""
        with self._lock:
            self.last_feedback_id = max(self.last_feedback_id, feedback_id)

    def observe_length(
        self,
        model: str,
        vector: npt.ArrayLike,
        *,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        with self._lock:
            self.lengths.observe(
                model, vector, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )

    # Deciding --------------------------------------------------------------------

    def route(self, request: RouteRequest, candidates: list[Candidate]) -> RoutingDecision:
        started = time.perf_counter()
        by_id = {c.model: c for c in candidates}
        if request.requested_model is not None and request.requested_model not in by_id:
            raise NoRoute(f"unknown model {request.requested_model!r}")
        usable = [c for c in candidates if c.chat or not request.requires_chat]
        if not usable:
            raise NoRoute("no base model can serve this request")
        # Embedding is the slow part and needs no lock.
        vector = self.embedder.embed(request.prompt_text)
        with self._lock:
            scored, neighbours, user_weight, evidence = self._score(request, usable, vector)
        chosen, reason = self._choose(request, scored, evidence)
        decision = self._explain(request, scored, chosen, reason, neighbours, user_weight, vector)
        seconds = time.perf_counter() - started
        decision.details["decision_ms"] = round(seconds * 1000, 3)
        with self._lock:
            self.decision_seconds.append(seconds)
            self.recent.append({"user_id": request.user_id, **decision.logged()})
        return decision

    def _score(
        self, request: RouteRequest, usable: list[Candidate], vector: npt.NDArray[np.float32]
    ) -> tuple[list[_Scored], list[tuple[int, float]], float, bool]:
        config = self.config
        depth = max(self.eagle.local.neighbours, config.quality_memory_neighbours)
        ids, sims = self.eagle.local.index.search(vector, depth)
        neighbours = [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True)]
        eagle_neighbours = neighbours[: self.eagle.local.neighbours]
        local = self.eagle.local.replay([i for i, _ in eagle_neighbours])
        predicted_quality = self.quality.predict_from_neighbours(vector, ids[0], sims[0])
        p = self.eagle.global_weight
        ratings = {
            c.model: p * self.eagle.global_elo[c.model] + (1.0 - p) * local[c.model] for c in usable
        }
        eagle_quality = win_probability_vs_field(ratings)
        user_weight = self.users.weight(request.user_id)
        user_ratings = self.users.ratings(request.user_id)
        user_quality = win_probability_vs_field({c.model: user_ratings[c.model] for c in usable})
        beta = config.quality_weight
        quality = {
            m: (1.0 - user_weight) * ((1.0 - beta) * eagle_quality[m] + beta * predicted_quality[m])
            + user_weight * user_quality[m]
            for m in ratings
        }
        evidence = any(self.games[c.model] for c in usable)

        lam = self.config.cost_weight if request.cost_weight is None else request.cost_weight
        predicted = {
            c.model: self.lengths.predict(
                c.model, vector, prompt_tokens=request.prompt_tokens, max_tokens=request.max_tokens
            )
            for c in usable
        }
        costs = {
            c.model: c.cost_per_million_tokens * (request.prompt_tokens + predicted[c.model]) / 1e6
            for c in usable
        }
        dearest = max(costs.values())
        scored = []
        for c in usable:
            load = self.load.snapshot(c.model)
            normalised_cost = costs[c.model] / dearest if dearest > 0 else 0.0
            scored.append(
                _Scored(
                    candidate=c,
                    rating=ratings[c.model],
                    predicted_quality=predicted_quality[c.model],
                    quality=quality[c.model],
                    predicted_tokens=predicted[c.model],
                    expected_cost=costs[c.model],
                    utility=quality[c.model] - lam * normalised_cost,
                    load=load,
                    predicted_latency=load.predicted_latency(predicted[c.model]),
                )
            )
        return scored, eagle_neighbours, user_weight, evidence

    def _choose(
        self, request: RouteRequest, scored: list[_Scored], evidence: bool
    ) -> tuple[_Scored, str]:
        by_model = {s.model: s for s in scored}
        if request.requested_model is not None:
            return by_model[request.requested_model], "forced"
        ceiling = request.max_price_per_million
        within = [
            s for s in scored if ceiling is None or s.candidate.cost_per_million_tokens <= ceiling
        ]
        if not within:
            if request.strict_budget:
                raise BudgetNotMet(
                    f"no base model costs at most {ceiling} per 1M tokens; the cheapest costs "
                    f"{min(s.candidate.cost_per_million_tokens for s in scored)}"
                )
            cheapest = min(scored, key=lambda s: (s.candidate.cost_per_million_tokens, s.model))
            return cheapest, "budget"

        if not evidence:
            # Nothing learnt yet: the configured default, else the cheapest.
            default = by_model.get(self.default_model or "")
            if default is None or default not in within:
                default = min(within, key=lambda s: (s.candidate.cost_per_million_tokens, s.model))
            best, reason = default, "default"
        else:
            best = max(within, key=_preference)
            top_quality = max(within, key=lambda s: (s.quality, -s.expected_cost, s.model))
            reason = "score" if best is top_quality else "cost"

        slo = request.latency_slo_seconds or self.config.latency_slo_seconds
        if best.load.saturated or (slo is not None and best.predicted_latency > slo):
            floor = best.utility - self.config.near_equal_margin
            free = [
                s
                for s in within
                if s is not best
                and not s.load.saturated
                and (slo is None or s.predicted_latency <= slo)
                and s.utility >= floor
            ]
            if free:
                return max(free, key=_preference), "load"
        return best, reason

    def _explain(
        self,
        request: RouteRequest,
        scored: list[_Scored],
        chosen: _Scored,
        reason: str,
        neighbours: list[tuple[int, float]],
        user_weight: float,
        vector: npt.NDArray[np.float32],
    ) -> RoutingDecision:
        ceiling = request.max_price_per_million
        candidates = {
            s.model: {
                "rating": round(s.rating, 2),
                "predicted_quality": round(s.predicted_quality, 4),
                "quality": round(s.quality, 4),
                "utility": round(s.utility, 4),
                "predicted_tokens": s.predicted_tokens,
                "expected_cost": s.expected_cost,
                "in_flight": s.load.in_flight,
                "predicted_latency_s": round(s.predicted_latency, 3),
                "within_budget": ceiling is None or s.candidate.cost_per_million_tokens <= ceiling,
            }
            for s in scored
        }
        with self._lock:
            sources = [
                (self._sources[i][0], similarity) for i, similarity in neighbours
            ]  # (response id, cosine)
        details: dict[str, Any] = {
            "candidates": candidates,
            "neighbours": {
                "count": len(neighbours),
                "similarities": [round(s, 4) for _, s in neighbours[:SHOWN_NEIGHBOURS]],
            },
            "user_weight": round(user_weight, 4),
            "cost_weight": (
                self.config.cost_weight if request.cost_weight is None else request.cost_weight
            ),
            "latency_slo_s": request.latency_slo_seconds or self.config.latency_slo_seconds,
        }
        if ceiling is not None:
            details["max_price"] = ceiling
        return RoutingDecision(
            model=chosen.model,
            reason=reason,
            scores={s.model: round(s.utility, 4) for s in scored},
            details=details,
            private_details={
                "neighbour_responses": [
                    {"response_id": rid, "similarity": round(sim, 4)} for rid, sim in sources
                ]
            },
            query_vector=vector,
            predicted_tokens=chosen.predicted_tokens,
        )

    # The admin view ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self.decision_seconds) * 1000
            recent = list(self.recent)
            users = [
                {
                    "user_id": user_id,
                    "feedback": self.users.feedback_count(user_id),
                    "weight": round(self.users.weight(user_id), 4),
                    "ratings": {m: round(r, 2) for m, r in self.users.ratings(user_id).items()},
                }
                for user_id in self.users.users()
            ]
            return {
                "config": {
                    "global_weight": self.config.global_weight,
                    "neighbours": self.config.neighbours,
                    "k": self.config.k,
                    "user_prior_games": self.config.user_prior_games,
                    "cost_weight": self.config.cost_weight,
                    "latency_slo_s": self.config.latency_slo_seconds,
                },
                "last_feedback_id": self.last_feedback_id,
                "global": {
                    m: {"rating": round(self.eagle.global_elo[m], 2), "games": self.games[m]}
                    for m in self.models
                },
                "local_queries": len(self.eagle.local),
                "users": users,
                "output_lengths": {m: self.lengths.observations(m) for m in self.models},
                "load": {m: vars(self.load.snapshot(m)) for m in self.models},
                "decision_ms": {
                    "count": int(latencies.size),
                    "p50": float(np.percentile(latencies, 50)) if latencies.size else None,
                    "p99": float(np.percentile(latencies, 99)) if latencies.size else None,
                },
                "recent": recent[::-1],
            }


def _preference(s: _Scored) -> tuple[float, float, str]:
    # Highest utility; on a tie the cheaper model, then a stable order.
    return (s.utility, -s.expected_cost, s.model)

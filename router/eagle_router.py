"""The learning router: a calibrated, uncertain estimate per model, the user's experts,
cost and load.

For a request it:
1. embeds the query (MiniLM) and finds the nearest past queries that got feedback;
2. estimates each candidate's P(good answer) for this user and query with its uncertainty
   (router/quality_estimate.py: a shared Bayesian posterior, everyone else's evidence near
   the query, the user's own evidence near it);
3. adds the expert term (the user's specialist on that base model, as the evaluation gate
   measured it) and subtracts lambda * expected cost / the dearest expected cost, the
   expected cost using the predicted output length;
4. keeps to the caller's price ceiling (else the cheapest, reason ``budget``); stays on the
   incumbent (the base holding the user's specialist, else the default model, else the
   cheapest) unless another model is better with ``switch_confidence``; explores within its
   budget (reason ``explore``); and moves off a model that is saturated or would miss the
   latency objective when a near-equal one would not (reason ``load``).

Eagle's global and local ELO ratings (arXiv 2409.15518) are kept and shown beside the
estimate, as a second opinion an admin can read; they do not decide.

Feedback updates the state at once; replaying the same feedback in the same order rebuilds
it exactly, and the same request against the same state gets the same decision, exploration
included. Thread-safe: requests are routed on many threads while feedback arrives.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from router.config import RouterConfig
from router.decision import Candidate, ExpertEvidence, RouteRequest, RoutingDecision
from router.default_model import cheapest, default_model
from router.elo import EloRatings, GameLog, Outcome, pairwise_outcomes
from router.embeddings import normalise_rows
from router.errors import BudgetNotMet, NoRoute
from router.exploration import exploration_rng, thompson_choice
from router.feedback_outcomes import FeedbackEvent, outcomes_for, rewards_for
from router.length_predictor import OutputLengthPredictor
from router.load import LoadTracker, ModelLoad
from router.quality_estimate import QualityEstimate, QualityEstimator
from router.query_embedder import Embedder

# Responses show this many neighbours' similarities; the log keeps all N.
SHOWN_NEIGHBOURS = 5


@dataclass(frozen=True)
class _Scored:
    candidate: Candidate
    rating: float
    quality: float
    std: float
    own_mass: float  # kernel mass of the user's own evidence on this model near the query
    expert_term: float
    specialist: bool  # the user has a specialist on this base
    predicted_tokens: int
    expected_cost: float
    utility: float
    load: ModelLoad
    predicted_latency: float

    @property
    def model(self) -> str:
        return self.candidate.model


@dataclass(frozen=True)
class _Choice:
    scored: _Scored
    reason: str
    explored: bool = False
    incumbent: str | None = None


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
        self.estimator = QualityEstimator(self.models, embedder.dimensions, c.estimator)
        self.global_elo = EloRatings(self.models, k=c.k, initial=c.initial_rating)
        # Per row of the estimator's memory: its games (for the local ELO) and source.
        self._games = GameLog(self.models)
        self._sources: list[str | None] = []  # the response id, None for a seed
        self.lengths = OutputLengthPredictor(embedder.dimensions)
        self.last_feedback_id = 0
        self.games: Counter[str] = Counter()
        self._switch_z = NormalDist().inv_cdf(c.switch_confidence)
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=c.recent_decisions)
        self.decision_seconds: deque[float] = deque(maxlen=10_000)

    # Learning ------------------------------------------------------------------

    def apply_feedback(self, event: FeedbackEvent) -> bool:
        """Learn from one piece of feedback; False when it was applied before.

        Events must come in feedback-id order (the order they were stored), so
        that a replay after a restart gives exactly the same state.
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
                self.estimator.observe(event, event.vector)
                self._games.append(outcomes)
                self._sources.append(event.response_id)
            # No embedding: only the global ELO (shown, not deciding) learns from it.
            self.global_elo.apply(outcomes)
            self._count(outcomes)
        return True

    def seed(self, vector: npt.ArrayLike, scores: Mapping[str, float]) -> None:
        """Learn from a labelled query that is not a user's feedback (an offline data
        set such as dcrouter, or uploaded correctness labels): each model's score in
        [0, 1] on it."""
        known = {m: float(v) for m, v in scores.items() if m in self.models}
        if not known:
            raise ValueError("scores name none of the router's models")
        outcomes = pairwise_outcomes(known, draws=False)
        with self._lock:
            self.estimator.seed(vector, known)
            self._games.append(outcomes)
            self._sources.append(None)
            self.global_elo.apply(outcomes)
            self._count(outcomes)

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
        # A chat only goes where the router chooses to models that have a chat template;
        # a model the caller names is theirs to chat with (as a plain transcript).
        usable = [
            c
            for c in candidates
            if c.chat or not request.requires_chat or c.model == request.requested_model
        ]
        if not usable:
            raise NoRoute("no base model can serve this request")
        # Embedding is the slow part and needs no lock.
        vector = normalise_rows(self.embedder.embed(request.prompt_text))[0]
        with self._lock:
            scored, neighbours, estimate, state_id = self._score(request, usable, vector)
        choice = self._choose(request, scored, state_id)
        decision = self._explain(request, scored, choice, neighbours, estimate, vector)
        seconds = time.perf_counter() - started
        decision.details["decision_ms"] = round(seconds * 1000, 3)
        with self._lock:
            self.decision_seconds.append(seconds)
            self.recent.append({"user_id": request.user_id, **decision.logged()})
        return decision

    def _score(
        self, request: RouteRequest, usable: list[Candidate], vector: npt.NDArray[np.float32]
    ) -> tuple[list[_Scored], list[tuple[int, float]], QualityEstimate, int]:
        config = self.config
        evidence = self.estimator.evidence
        depth = max(config.neighbours, config.estimator.evidence.neighbours)
        ids, sims = evidence.index.search(vector, depth)
        neighbours = [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True)]
        estimate = self.estimator.estimate(
            vector, user_id=request.user_id, neighbour_ids=ids[0], neighbour_cosines=sims[0]
        )
        local = self._games.replay(
            [i for i, _ in neighbours[: config.neighbours]],
            k=config.k,
            initial=config.initial_rating,
        )
        p = config.global_weight
        ratings = {
            c.model: p * self.global_elo[c.model] + (1.0 - p) * local[c.model] for c in usable
        }
        experts = {e.model: e for e in request.experts}
        lam = config.cost_weight if request.cost_weight is None else request.cost_weight
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
            column = estimate.of(c.model)
            quality = float(estimate.quality[column])
            evidence_of_experts = experts.get(c.model)
            expert_term = self._expert_term(evidence_of_experts)
            load = self.load.snapshot(c.model)
            normalised_cost = costs[c.model] / dearest if dearest > 0 else 0.0
            scored.append(
                _Scored(
                    candidate=c,
                    rating=ratings[c.model],
                    quality=quality,
                    std=float(estimate.std[column]),
                    own_mass=float(estimate.user_mass[column]),
                    expert_term=expert_term,
                    specialist=evidence_of_experts is not None
                    and evidence_of_experts.specialist_version_id is not None,
                    predicted_tokens=predicted[c.model],
                    expected_cost=costs[c.model],
                    utility=quality + expert_term - lam * normalised_cost,
                    load=load,
                    predicted_latency=load.predicted_latency(predicted[c.model]),
                )
            )
        # The exploration draw's state: the user's own votes, so that other users'
        # feedback never reshuffles this user's exploration.
        return scored, neighbours, estimate, self.estimator.influence.votes(request.user_id)

    def _expert_term(self, experts: ExpertEvidence | None) -> float:
        if experts is None or experts.specialist_version_id is None:
            return 0.0
        bonus = self.config.expert_bonus
        if experts.significant:
            return bonus
        if experts.gain is None or not math.isfinite(experts.gain):
            return 0.0
        return bonus * min(1.0, max(0.0, experts.gain / self.config.expert_reference_gain))

    def _incumbent(self, within: list[_Scored]) -> tuple[_Scored, str]:
        """The model the router stays on unless another is clearly better: where the user's
        specialist is (measured or not: their personalisation lives there), else the default."""
        with_experts = [s for s in within if s.specialist]
        if with_experts:
            return max(with_experts, key=lambda s: (s.expert_term, s.model)), "expert"
        chosen = default_model([s.candidate for s in within], self.default_model)
        return next(s for s in within if s.model == chosen), "default"

    def _choose(self, request: RouteRequest, scored: list[_Scored], state_id: int) -> _Choice:
        by_model = {s.model: s for s in scored}
        if request.requested_model is not None:
            return _Choice(by_model[request.requested_model], "forced")
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
            lowest = cheapest(s.candidate for s in scored).model
            return _Choice(next(s for s in scored if s.model == lowest), "budget")

        incumbent, kept_reason = self._incumbent(within)
        best = max(within, key=_preference)
        if best is incumbent:
            top_quality = max(within, key=lambda s: (s.quality, -s.expected_cost, s.model))
            if not self.estimator.has_evidence:
                # Nothing learnt: the incumbent because it is the incumbent.
                choice = _Choice(incumbent, kept_reason, incumbent=incumbent.model)
            else:
                reason = "score" if best is top_quality else "cost"
                if incumbent.specialist and best is not top_quality:
                    reason = "expert"
                choice = _Choice(best, reason, incumbent=incumbent.model)
        else:
            spread = math.sqrt(best.std**2 + incumbent.std**2)
            clearly_better = (
                best.utility - incumbent.utility >= self._own_switch_z(best, incumbent) * spread
            )
            if clearly_better:
                top_quality = max(within, key=lambda s: (s.quality, -s.expected_cost, s.model))
                choice = _Choice(
                    best, "score" if best is top_quality else "cost", incumbent=incumbent.model
                )
            else:
                choice = _Choice(incumbent, kept_reason, incumbent=incumbent.model)

        if request.explore and not request.strict_budget and self.config.explore_rate > 0:
            choice = self._explore(request, within, choice, state_id)

        slo = request.latency_slo_seconds or self.config.latency_slo_seconds
        chosen = choice.scored
        if chosen.load.saturated or (slo is not None and chosen.predicted_latency > slo):
            floor = chosen.utility - self.config.near_equal_margin
            free = [
                s
                for s in within
                if s is not chosen
                and not s.load.saturated
                and (slo is None or s.predicted_latency <= slo)
                and s.utility >= floor
            ]
            if free:
                return _Choice(max(free, key=_preference), "load", incumbent=choice.incumbent)
        return choice

    def _own_switch_z(self, best: _Scored, incumbent: _Scored) -> float:
        """How sure the router must be to move this user off the incumbent. The bar guards
        against a few votes moving everyone; a user's own repeated feedback on both models
        near this query is them telling the router what they want, so it lowers the bar for
        their own route, as their evidence outweighs the prior it is shrunk towards."""
        prior = self.config.estimator.evidence.user_prior_weight
        own = min(best.own_mass, incumbent.own_mass)
        return self._switch_z * prior / (prior + own)

    def _explore(
        self, request: RouteRequest, within: list[_Scored], choice: _Choice, state_id: int
    ) -> _Choice:
        open_ = [s for s in within if not s.load.saturated]
        if len(open_) < 2:
            return choice
        rng = exploration_rng(request.user_id, request.prompt_text, state_id)
        picked = thompson_choice(
            rng,
            [s.utility for s in open_],
            [s.std for s in open_],
            rate=self.config.explore_rate,
        )
        if picked is None:
            return choice
        option = open_[picked]
        regret = choice.scored.utility - option.utility
        if option is choice.scored or regret > self.config.explore_max_regret:
            return choice
        return _Choice(option, "explore", explored=True, incumbent=choice.incumbent)

    def _explain(
        self,
        request: RouteRequest,
        scored: list[_Scored],
        choice: _Choice,
        neighbours: list[tuple[int, float]],
        estimate: QualityEstimate,
        vector: npt.NDArray[np.float32],
    ) -> RoutingDecision:
        ceiling = request.max_price_per_million
        candidates = {}
        for s in scored:
            column = estimate.of(s.model)
            candidates[s.model] = {
                "rating": round(s.rating, 2),
                "quality": round(s.quality, 4),
                "quality_std": round(s.std, 4),
                "shared_quality": round(float(estimate.shared[column]), 4),
                "neighbour_shift": round(float(estimate.shared_shift[column]), 4),
                "user_shift": round(float(estimate.user_shift[column]), 4),
                "expert_term": round(s.expert_term, 4),
                "utility": round(s.utility, 4),
                "predicted_tokens": s.predicted_tokens,
                "expected_cost": s.expected_cost,
                "in_flight": s.load.in_flight,
                "predicted_latency_s": round(s.predicted_latency, 3),
                "within_budget": ceiling is None or s.candidate.cost_per_million_tokens <= ceiling,
            }
        experts = {
            e.model: {
                "specialist_version_id": e.specialist_version_id,
                "generalists": e.generalists,
                "gain": None if e.gain is None else round(e.gain, 4),
                "significant": e.significant,
            }
            for e in request.experts
        }
        with self._lock:
            sources = [(self._sources[i], similarity) for i, similarity in neighbours]
        details: dict[str, Any] = {
            "candidates": candidates,
            "explored": choice.explored,
            "incumbent": choice.incumbent,
            "experts": experts,
            "neighbours": {
                "count": len(neighbours),
                "similarities": [round(s, 4) for _, s in neighbours[:SHOWN_NEIGHBOURS]],
            },
            "user_feedback": self.estimator.influence.votes(request.user_id),
            "cost_weight": (
                self.config.cost_weight if request.cost_weight is None else request.cost_weight
            ),
            "latency_slo_s": request.latency_slo_seconds or self.config.latency_slo_seconds,
        }
        if ceiling is not None:
            details["max_price"] = ceiling
        chosen = choice.scored
        return RoutingDecision(
            model=chosen.model,
            reason=choice.reason,
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

    # Snapshots (router/snapshot.py) ------------------------------------------------

    def export_state(self) -> tuple[dict[str, npt.NDArray[Any]], int]:
        """Plain arrays of everything learnt from feedback, and the feedback id they hold up
        to. Output lengths are not included: they are relearnt from recent responses."""
        with self._lock:
            estimator = self.estimator
            arrays: dict[str, npt.NDArray[Any]] = {
                **{f"posterior_{k}": v for k, v in estimator.posterior.state().items()},
                **{f"evidence_{k}": v for k, v in estimator.evidence.state().items()},
                **{f"influence_{k}": v for k, v in estimator.influence.state().items()},
                "elo": np.array([self.global_elo[m] for m in self.models]),
                **{f"games_{k}": v for k, v in self._games.state().items()},
                "sources": np.array([s or "" for s in self._sources], dtype=np.str_),
                "game_counts": np.array([self.games[m] for m in self.models], dtype=np.int64),
            }
            return arrays, self.last_feedback_id

    def import_state(self, arrays: Mapping[str, npt.NDArray[Any]], last_feedback_id: int) -> None:
        """Load what ``export_state`` wrote into this (fresh) router."""
        estimator = QualityEstimator(self.models, self.embedder.dimensions, self.config.estimator)
        estimator.posterior.load_state(
            {k[len("posterior_") :]: v for k, v in arrays.items() if k.startswith("posterior_")}
        )
        estimator.evidence.load_state(
            {k[len("evidence_") :]: v for k, v in arrays.items() if k.startswith("evidence_")}
        )
        estimator.influence.load_state(
            {k[len("influence_") :]: v for k, v in arrays.items() if k.startswith("influence_")}
        )
        games = GameLog.from_state(
            self.models,
            {k[len("games_") :]: v for k, v in arrays.items() if k.startswith("games_")},
        )
        sources = [str(s) or None for s in arrays["sources"]]
        if not (len(games) == len(sources) == len(estimator.evidence)):
            raise ValueError("the snapshot's rows disagree with each other")
        elo = arrays["elo"]
        if elo.shape != (len(self.models),):
            raise ValueError("the snapshot's ratings do not fit these models")
        with self._lock:
            self.estimator = estimator
            self._games, self._sources = games, sources
            for model, rating in zip(self.models, elo.tolist(), strict=True):
                self.global_elo.ratings[model] = float(rating)
            self.games = Counter(
                dict(zip(self.models, arrays["game_counts"].tolist(), strict=True))
            )
            self.last_feedback_id = last_feedback_id

    # The admin view ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self.decision_seconds) * 1000
            recent = list(self.recent)
            influence = self.estimator.influence
            users = [
                {
                    "user_id": user_id,
                    "feedback": influence.votes(user_id),
                    "shared_weight": round(influence.shared_weight(user_id), 3),
                    "trust": round(influence.trust(user_id), 3),
                    "own_evidence_rows": self.estimator.evidence.user_row_count(user_id),
                }
                for user_id in influence.users()
            ]
            posterior = self.estimator.posterior
            return {
                "config": {
                    "global_weight": self.config.global_weight,
                    "neighbours": self.config.neighbours,
                    "k": self.config.k,
                    "cost_weight": self.config.cost_weight,
                    "latency_slo_s": self.config.latency_slo_seconds,
                    "switch_confidence": self.config.switch_confidence,
                    "explore_rate": self.config.explore_rate,
                    "explore_max_regret": self.config.explore_max_regret,
                    "expert_bonus": self.config.expert_bonus,
                    "user_full_votes": self.config.estimator.user_full_votes,
                    "user_max_share": self.config.estimator.user_max_share,
                },
                "last_feedback_id": self.last_feedback_id,
                "global": {
                    m: {
                        "rating": round(self.global_elo[m], 2),
                        "games": self.games[m],
                        "evidence": round(float(posterior.evidence[i]), 3),
                        "intercept_quality": round(
                            float(1 / (1 + math.exp(-posterior.means[i, -1]))), 4
                        ),
                    }
                    for i, m in enumerate(self.models)
                },
                "local_queries": len(self.estimator.evidence),
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

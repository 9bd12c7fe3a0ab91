"""The learning router's knobs, checked when built (peft-style ``__post_init__``)."""

from __future__ import annotations

from dataclasses import dataclass

from router.elo import DEFAULT_GLOBAL_WEIGHT, DEFAULT_INITIAL, DEFAULT_K, DEFAULT_NEIGHBOURS


@dataclass(frozen=True)
class RouterConfig:
    """Eagle's P, N and K (the paper's values by default) and Tailor's additions.

    ``user_prior_games``: a user's own ratings weigh n / (n + user_prior_games)
    after n pieces of that user's feedback, so a new user gets the global
    behaviour and a user with many preferences gets their own.

    ``cost_weight`` (lambda): utility = quality - lambda * cost / dearest cost,
    quality being a win probability in [0, 1]; at 0.1 the dearest model must
    be expected to win 10 points more often than a free one to be worth it.

    ``near_equal_margin``: how much utility the router gives up to move a
    request off a model that would miss its latency objective.

    ``quality_weight`` (beta): the shared quality is (1 - beta) x Eagle's win
    probability + beta x the quality model's prediction (per-model online ridge
    on the embedding with a neighbour correction, router/quality_model.py);
    ``quality_penalty`` and the three ``quality_memory_*`` fields are that
    model's ridge penalty and neighbour correction. Defaults: chosen on a
    validation split of dcrouter's train set (`tailor router eval`), where beta
    = 1 scored best (AIQ 0.620 against 0.596 for Eagle alone at the paper's
    settings): the shared quality is then the quality model's, and the ELO
    ratings (global, local and each user's) keep their other jobs, the user's
    own preference above all. Lower beta brings the shared ELO back in.
    """

    global_weight: float = DEFAULT_GLOBAL_WEIGHT
    neighbours: int = DEFAULT_NEIGHBOURS
    k: float = DEFAULT_K
    initial_rating: float = DEFAULT_INITIAL
    user_prior_games: float = 10.0
    cost_weight: float = 0.1
    latency_slo_seconds: float | None = 30.0
    near_equal_margin: float = 0.1
    recent_decisions: int = 200
    quality_weight: float = 1.0
    quality_penalty: float = 30.0
    quality_memory_neighbours: int = 50
    quality_memory_bandwidth: float = 0.2
    quality_memory_prior_weight: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.global_weight <= 1.0:
            raise ValueError("global_weight (P) must lie in [0, 1]")
        if self.neighbours < 1:
            raise ValueError("neighbours (N) must be at least 1")
        if self.k <= 0:
            raise ValueError("k (the ELO step) must be positive")
        if self.user_prior_games <= 0:
            raise ValueError("user_prior_games must be positive")
        if self.cost_weight < 0:
            raise ValueError("cost_weight (lambda) must not be negative")
        if self.latency_slo_seconds is not None and self.latency_slo_seconds <= 0:
            raise ValueError("latency_slo_seconds must be positive (or None for no objective)")
        if not 0.0 <= self.near_equal_margin <= 1.0:
            raise ValueError("near_equal_margin must lie in [0, 1]")
        if self.recent_decisions < 0:
            raise ValueError("recent_decisions must not be negative")
        if not 0.0 <= self.quality_weight <= 1.0:
            raise ValueError("quality_weight (beta) must lie in [0, 1]")
        if self.quality_penalty <= 0:
            raise ValueError("quality_penalty must be positive")

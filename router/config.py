"""The learning router's knobs, checked when built (peft-style ``__post_init__``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from router.elo import DEFAULT_GLOBAL_WEIGHT, DEFAULT_INITIAL, DEFAULT_K, DEFAULT_NEIGHBOURS
from router.quality_estimate import EstimatorConfig


@dataclass(frozen=True)
class RouterConfig:
    """How the router decides (its estimate's own knobs are in ``estimator``).

    ``cost_weight`` (lambda): utility = P(good) + expert term - lambda * cost / dearest
    cost. P(good) is calibrated whatever the feedback type, so at 0.1 the dearest model must
    be expected to answer well 10 points more often than a free one to be worth it.

    ``switch_confidence``: the router leaves the incumbent (the model holding the user's
    specialist, else the default model, else the cheapest) only for a model whose utility
    is higher with at least this posterior probability: one vote, or a few, cannot move
    anyone off it.

    ``explore_rate`` and ``explore_max_regret``: the exploration budget. At most this share
    of a user's ``auto`` requests (a deterministic draw per user, query and state) may go to
    the model a Thompson sample prefers, and only when its expected utility is at most
    ``explore_max_regret`` below the choice's. Never with ``strict_budget``.

    ``expert_bonus``: the utility of a user's own specialist on a base model, in full when
    its gain over the base passed the evaluation gate's significance test, else in
    proportion to its relative NLL gain up to ``expert_reference_gain``.

    ``near_equal_margin``: how much utility the router gives up to move a request off a
    model that is saturated or would miss the latency objective.

    Eagle's P, N and K (``global_weight``, ``neighbours``, ``k``) shape the ELO ratings
    every decision shows beside its calibrated estimate.
    """

    global_weight: float = DEFAULT_GLOBAL_WEIGHT
    neighbours: int = DEFAULT_NEIGHBOURS
    k: float = DEFAULT_K
    initial_rating: float = DEFAULT_INITIAL
    cost_weight: float = 0.1
    latency_slo_seconds: float | None = 30.0
    near_equal_margin: float = 0.1
    recent_decisions: int = 200
    switch_confidence: float = 0.95
    explore_rate: float = 0.05
    explore_max_regret: float = 0.05
    expert_bonus: float = 0.1
    expert_reference_gain: float = 0.05
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.global_weight <= 1.0:
            raise ValueError("global_weight (P) must lie in [0, 1]")
        if self.neighbours < 1:
            raise ValueError("neighbours (N) must be at least 1")
        if self.k <= 0:
            raise ValueError("k (the ELO step) must be positive")
        if self.cost_weight < 0:
            raise ValueError("cost_weight (lambda) must not be negative")
        if self.latency_slo_seconds is not None and self.latency_slo_seconds <= 0:
            raise ValueError("latency_slo_seconds must be positive (or None for no objective)")
        if not 0.0 <= self.near_equal_margin <= 1.0:
            raise ValueError("near_equal_margin must lie in [0, 1]")
        if self.recent_decisions < 0:
            raise ValueError("recent_decisions must not be negative")
        if not 0.5 <= self.switch_confidence < 1.0:
            raise ValueError("switch_confidence must lie in [0.5, 1)")
        if not 0.0 <= self.explore_rate <= 1.0:
            raise ValueError("explore_rate must lie in [0, 1]")
        if not 0.0 <= self.explore_max_regret <= 1.0:
            raise ValueError("explore_max_regret must lie in [0, 1]")
        if not (0.0 <= self.expert_bonus <= 1.0):
            raise ValueError("expert_bonus must lie in [0, 1]")
        if not (self.expert_reference_gain > 0 and math.isfinite(self.expert_reference_gain)):
            raise ValueError("expert_reference_gain must be positive and finite")

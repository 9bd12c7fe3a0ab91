"""One calibrated estimate of P(answer good | query, model, user), with its uncertainty.

Three parts, each learnt online from every kind of feedback on one scale:

1. the shared posterior (router/posterior.py): a Bayesian logistic regression per model on
   the query embedding, fed by ratings, preferences and uploaded labels, each user's votes
   weighted by their bounded influence (router/user_influence.py);
2. the evidence of everyone else's feedback on similar past queries, shrunk towards the
   shared estimate (router/neighbour_evidence.py);
3. the requesting user's own feedback on similar queries, shrunk the same way.

    P(good) = clip(sigmoid(mean logit) + shared shift + user shift)

The uncertainty combines the shared posterior's standard deviation on the probability scale
(router/posterior.py) with the precision of the evidence near the query (its kernel mass,
each unit an observation of variance at most 1/4): that is what the
router's "clearly better" test and its exploration read.

Learning is deterministic: replaying the same feedback in the same order rebuilds the same
numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from router.embeddings import normalise_rows
from router.feedback_outcomes import FeedbackEvent
from router.neighbour_evidence import EvidenceConfig, NeighbourEvidence
from router.posterior import (
    FloatArray,
    LogisticPosterior,
    probability_std,
    sigmoid,
    with_intercept,
)
from router.user_influence import Surprise, UserInfluence

_OUTCOME_VARIANCE = 0.25
# Never quite certain: keeps logits finite and leaves room to learn.
_FLOOR = 0.001


@dataclass(frozen=True)
class EstimatorConfig:
    """Prior variances of the shared posterior (on [unit embedding, 1] features), the
    evidence kernels, and how many votes a user has at full weight. Chosen on a validation
    split of dcrouter's train set (docs/benchmarks.md)."""

    weight_variance: float = 0.25  # chosen on validation, docs/benchmarks.md
    intercept_variance: float = 0.25  # chosen on validation, docs/benchmarks.md
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    # router/user_influence.py; chosen on the online replay (docs/benchmarks.md)
    user_full_votes: int = 1
    user_max_share: float = 0.05
    user_trusted_z: float = 2.0

    def __post_init__(self) -> None:
        for name in ("weight_variance", "intercept_variance"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite")
        if self.user_full_votes < 1:
            raise ValueError("user_full_votes must be at least 1")
        if not 0.0 <= self.user_max_share < 1.0:
            raise ValueError("user_max_share must lie in [0, 1)")
        if not (self.user_trusted_z >= 0 and math.isfinite(self.user_trusted_z)):
            raise ValueError("user_trusted_z must be non-negative and finite")


@dataclass(frozen=True)
class QualityEstimate:
    """Per model (in the estimator's order): the parts of one query's estimate."""

    models: list[str]
    quality: FloatArray  # P(good), the decision's scale
    std: FloatArray  # its uncertainty
    shared: FloatArray  # the shared posterior's P(good) alone
    shared_shift: FloatArray
    user_shift: FloatArray
    user_mass: FloatArray  # kernel mass of the user's own evidence per model

    def of(self, model: str) -> int:
        return self.models.index(model)


class QualityEstimator:
    def __init__(
        self, models: list[str], dimensions: int, config: EstimatorConfig | None = None
    ) -> None:
        self.config = config or EstimatorConfig()
        self.models = list(models)
        self.dimensions = dimensions
        self.posterior = LogisticPosterior(
            self.models,
            dimensions + 1,
            weight_variance=self.config.weight_variance,
            intercept_variance=self.config.intercept_variance,
        )
        self.evidence = NeighbourEvidence(self.models, dimensions, self.config.evidence)
        self.influence = UserInfluence(
            self.config.user_full_votes,
            max_share=self.config.user_max_share,
            trusted_z=self.config.user_trusted_z,
        )
        self._column = {m: i for i, m in enumerate(self.models)}

    # ---- learning ----------------------------------------------------------------------

    def observe(self, event: FeedbackEvent, vector: npt.ArrayLike | None) -> float:
        """Learn from one piece of feedback (``vector``: its normalised query embedding, or
        None when none was kept, which teaches nothing). Returns the weight it had in the
        shared estimate, 0 when it taught nothing."""
        if vector is None or event.model not in self._column:
            return 0.0
        other = event.other_model
        if other is not None and (other == event.model or other not in self._column):
            return 0.0
        vector = normalise_rows(vector)
        phi = with_intercept(vector)
        # A data set's labels (no user) always count fully: no surprise to score.
        surprise = self._surprise(event, phi) if event.user_id else None
        weight = self.influence.next_weight(event.user_id, surprise)
        # A vote with no weight left for everyone else still joins the user's own evidence.
        if event.other_model is not None:
            if weight > 0:
                self.posterior.observe_preference(
                    phi, event.model, event.other_model, weight=weight
                )
            self.evidence.add_preference(
                vector,
                self._column[event.model],
                self._column[event.other_model],
                weight=weight,
                user_id=event.user_id,
            )
        else:
            assert event.rating is not None
            label = (event.rating + 1) / 2
            if weight > 0:
                self.posterior.observe_label(phi, event.model, label, weight=weight)
            self.evidence.add_labels(
                vector, {self._column[event.model]: label}, weight=weight, user_id=event.user_id
            )
        return weight

    def _surprise(self, event: FeedbackEvent, phi: FloatArray) -> Surprise:
        """What the shared posterior expected of this vote, before learning from it."""
        logits = self.posterior.mean_logits(phi)[0]
        if event.other_model is not None:
            gap = logits[self._column[event.model]] - logits[self._column[event.other_model]]
            return Surprise(p=float(sigmoid(gap)), y=1.0)
        assert event.rating is not None
        return Surprise(
            p=float(sigmoid(logits[self._column[event.model]])), y=(event.rating + 1) / 2
        )

    def seed(self, vector: npt.ArrayLike, scores: dict[str, float]) -> None:
        """Labels that are not a user's feedback (an offline data set): each model's score in
        [0, 1] on this query."""
        known = {self._column[m]: float(v) for m, v in scores.items() if m in self._column}
        if not known:
            raise ValueError("scores name none of the router's models")
        for score in known.values():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"a score must lie in [0, 1], got {score!r}")
        vector = normalise_rows(vector)
        phi = with_intercept(vector)
        for column, score in known.items():
            self.posterior.observe_label(phi, self.models[column], score)
        self.evidence.add_labels(vector, known, weight=1.0, user_id=None)

    # ---- estimating --------------------------------------------------------------------

    def shared_probability(self, vectors: npt.NDArray[np.float32]) -> FloatArray:
        """The shared posterior's P(good) at many rows (mean logits: O(d) per row and model)."""
        return sigmoid(self.posterior.mean_logits(with_intercept(vectors)))

    def estimate(
        self,
        vector: npt.ArrayLike,
        *,
        user_id: str | None,
        neighbour_ids: npt.ArrayLike,
        neighbour_cosines: npt.ArrayLike,
    ) -> QualityEstimate:
        """The estimate for one normalised query whose nearest stored rows are given."""
        query = normalise_rows(vector)
        mean, variance = self.posterior.logits(with_intercept(query))
        shared = sigmoid(mean[0])
        std = probability_std(mean[0], variance[0])
        others = self.evidence.shared_shift(
            neighbour_ids, neighbour_cosines, self.shared_probability, exclude_user=user_id
        )
        own = self.evidence.user_shift(query[0], user_id or "", self.shared_probability)
        # The evidence near the query is more observations of this very answer: its kernel
        # mass adds precision at the variance of one 0/1 outcome, at most 1/4.
        precision = 1.0 / np.maximum(std, 1e-6) ** 2 + (others.mass + own.mass) / _OUTCOME_VARIANCE
        std = 1.0 / np.sqrt(precision)
        quality = np.clip(shared + others.values + own.values, _FLOOR, 1.0 - _FLOOR)
        return QualityEstimate(
            models=self.models,
            quality=quality,
            std=std,
            shared=shared,
            shared_shift=others.values,
            user_shift=own.values,
            user_mass=own.mass,
        )

    def predict_many(self, vectors: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(queries, models) P(good) and its std for a user with no feedback of their own
        (the offline evaluation's view)."""
        queries = normalise_rows(vectors)
        ids, cosines = self.evidence.index.search(queries, self.config.evidence.neighbours)
        quality = np.zeros((len(queries), len(self.models)))
        std = np.zeros_like(quality)
        for i, query in enumerate(queries):
            found = self.estimate(
                query, user_id=None, neighbour_ids=ids[i], neighbour_cosines=cosines[i]
            )
            quality[i], std[i] = found.quality, found.std
        return quality, std

    @property
    def has_evidence(self) -> bool:
        return bool(self.posterior.evidence.sum() > 0)

"""The routers under test in the offline evaluation (router/offline_eval.py), and how
each is fit from a routing data set's train split.

Each router here ends as a score matrix (queries x models) that router/lambda_sweep.py
turns into figures: k-NN over train's recorded scores, Eagle's ELO ratings
(router/elo.py), the old quality model (router/quality_model.py) and the served estimate
(router/quality_estimate.py), the last two fed either full information (every model's
score on each query) or what the live service gets (one rating or one preference per
query). The evaluation is the only user of these fits; the live router builds its
own from feedback.

Invariants: a fit reads train rows in their recorded order and nothing of test; every
random draw is seeded (routing_data.SEED), and the quality model and the served estimate
get the same draws, so two fits on the same data are equal and the two are compared on
the same feedback; nothing is read or written but the arrays given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from router.elo import EagleRatings, pairwise_outcomes, win_probability_vs_field
from router.embeddings import FloatMatrix, QueryIndex
from router.feedback_outcomes import FeedbackEvent
from router.neighbour_evidence import EvidenceConfig
from router.quality_cost import FloatArray
from router.quality_estimate import EstimatorConfig, QualityEstimator
from router.quality_model import QualityModel, QualityModelConfig
from router.routing_data import SEED

KNN_NEIGHBOURS = 20


def knn_scores(
    train_vectors: FloatMatrix, train_scores: FloatArray, queries: FloatMatrix, k: int
) -> FloatArray:
    index = QueryIndex(train_vectors.shape[1])
    index.add(train_vectors)
    ids, _ = index.search(queries, k)
    means: FloatArray = train_scores[ids].mean(axis=1)
    return means


@dataclass(frozen=True)
class EagleConfig:
    draws: bool = False
    global_weight: float = 0.5
    neighbours: int = 20
    k: float = 32.0

    def label(self) -> str:
        ties = "draws" if self.draws else "skip ties"
        return f"P={self.global_weight} N={self.neighbours} K={self.k:g} {ties}"


PAPER_CONFIG = EagleConfig()


def fit_eagle(
    config: EagleConfig, models: list[str], vectors: FloatMatrix, scores: FloatArray
) -> EagleRatings:
    eagle = EagleRatings(
        models,
        vectors.shape[1],
        global_weight=config.global_weight,
        neighbours=config.neighbours,
        k=config.k,
    )
    observe_all(eagle, config, vectors, scores)
    return eagle


def observe_all(
    eagle: EagleRatings, config: EagleConfig, vectors: FloatMatrix, scores: FloatArray
) -> None:
    for vector, row in zip(vectors, scores, strict=True):
        outcomes = pairwise_outcomes(dict(zip(eagle.models, row, strict=True)), draws=config.draws)
        eagle.observe(vector, outcomes)


def eagle_scores(eagle: EagleRatings, queries: FloatMatrix) -> FloatArray:
    rows = []
    for vector in queries:
        blended, _ = eagle.scores(vector)
        quality = win_probability_vs_field(blended)
        rows.append([quality[m] for m in eagle.models])
    return np.array(rows)


def observe_all_quality(model: QualityModel, vectors: FloatMatrix, scores: FloatArray) -> None:
    """Full feedback: every model's score on each query, in order."""
    for vector, row in zip(vectors, scores, strict=True):
        model.observe_rewards(vector, dict(zip(model.models, row, strict=True)))


def fit_quality(
    config: QualityModelConfig, models: list[str], vectors: FloatMatrix, scores: FloatArray
) -> QualityModel:
    model = QualityModel(models, vectors.shape[1], config)
    observe_all_quality(model, vectors, scores)
    return model


def fit_quality_partial(
    config: QualityModelConfig,
    models: list[str],
    vectors: FloatMatrix,
    scores: FloatArray,
    feedback: str,
) -> QualityModel:
    """What the live service gets: per query one model's score ("rating") or one
    preference between two random models ("preference"; ties teach nothing, skipped)."""
    model = QualityModel(models, vectors.shape[1], config)
    rng = np.random.default_rng(SEED)
    for vector, row in zip(vectors, scores, strict=True):
        if feedback == "rating":
            j = int(rng.integers(len(models)))
            model.observe(vector, models[j], float(row[j]))
        elif feedback == "preference":
            a, b = (int(i) for i in rng.choice(len(models), size=2, replace=False))
            if row[a] != row[b]:
                winner, loser = (a, b) if row[a] > row[b] else (b, a)
                model.observe_pairwise(vector, models[winner], models[loser])
        else:
            raise ValueError(f"feedback is 'rating' or 'preference', not {feedback!r}")
    return model


def fit_estimator(
    config: EstimatorConfig, models: list[str], vectors: FloatMatrix, scores: FloatArray
) -> QualityEstimator:
    """The served estimate seeded with every model's score on each query, in order."""
    estimator = QualityEstimator(models, vectors.shape[1], config)
    for vector, row in zip(vectors, scores, strict=True):
        estimator.seed(vector, dict(zip(models, row, strict=True)))
    return estimator


def fit_estimator_partial(
    config: EstimatorConfig,
    models: list[str],
    vectors: FloatMatrix,
    scores: FloatArray,
    feedback: str,
) -> QualityEstimator:
    """The served estimate fed live-like feedback, as ``fit_quality_partial`` feeds the
    quality model (the same seeded draws): per query one model's score read as a rating,
    or one preference between two random models (ties teach nothing, skipped). The
    feedback has no user, so each piece counts in full, as a data set's labels do."""
    estimator = QualityEstimator(models, vectors.shape[1], config)
    rng = np.random.default_rng(SEED)
    for i, (vector, row) in enumerate(zip(vectors, scores, strict=True)):
        if feedback == "rating":
            j = int(rng.integers(len(models)))
            # A score of 1 / 0.5 / 0 is a rating of +1 / 0 / -1 (partial credits rounded).
            rating = round(2 * float(row[j])) - 1
            event = FeedbackEvent(feedback_id=i, user_id="", model=models[j], rating=rating)
        elif feedback == "preference":
            a, b = (int(k) for k in rng.choice(len(models), size=2, replace=False))
            if row[a] == row[b]:
                continue
            winner, loser = (a, b) if row[a] > row[b] else (b, a)
            event = FeedbackEvent(
                feedback_id=i, user_id="", model=models[winner], other_model=models[loser]
            )
        else:
            raise ValueError(f"feedback is 'rating' or 'preference', not {feedback!r}")
        estimator.observe(event, vector)
    return estimator


def use_evidence(estimator: QualityEstimator, evidence: EvidenceConfig) -> None:
    """Score with other evidence settings. The evidence rows are kept whatever the
    settings and only read when scoring, so one fit serves every evidence setting."""
    estimator.config = replace(estimator.config, evidence=evidence)
    estimator.evidence.config = evidence

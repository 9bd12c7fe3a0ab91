"""``tailor router eval --data DIR``: the served quality estimate, Eagle and the old
quality model against baselines on a routing data set in dcrouter's format
(router/routing_data.py).

Every router yields a score per (query, model); a sweep over lambda picks
argmax(score - lambda * normalised cost) and traces a quality-cost curve. Each
learning router's settings are chosen on the same validation split of train; test
is only scored.

The "served" row is router/quality_estimate.py's calibrated P(good), what the live router
decides on at lambda (its exploration and incumbent rule act only live). Since it claims
to be a probability, its reliability on test (binned predicted P(good) of the picked model
against that model's score, router/calibration.py) is measured too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from router.calibration import Reliability, reliability_bins
from router.config import RouterConfig
from router.elo import EagleRatings, pairwise_outcomes, win_probability_vs_field
from router.embeddings import DEFAULT_CACHE_DIR, FloatMatrix, QueryIndex, embed_texts
from router.feedback_outcomes import FeedbackEvent
from router.neighbour_evidence import EvidenceConfig
from router.quality_cost import (
    FloatArray,
    IntArray,
    aiq,
    apgr,
    cpt,
    entropy_bits,
    strong_weak_curve,
)
from router.quality_estimate import EstimatorConfig, QualityEstimator
from router.quality_model import NeighbourCorrection, QualityModel, QualityModelConfig
from router.query_embedder import Embedder
from router.routing_data import (
    EXPECTED_INPUT_TOKENS,
    EXPECTED_OUTPUT_TOKENS,
    SEED,
    VALIDATION_FRACTION,
    RoutingData,
    validation_split,
)
from router.routing_data import load_routing_data as load_routing_data  # re-exported

KNN_NEIGHBOURS = 20
ONLINE_FRACTIONS = (0.70, 0.85, 1.00)
# From "never mind cost" to "cheapest model for everyone" on a [0, 1] score scale.
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, *(float(x) for x in np.geomspace(1e-3, 1e2, 51)))


# ---- routers and the sweep -------------------------------------------------------------


def route(scores: FloatArray, cost: FloatArray, lam: float) -> IntArray:
    """argmax of score - lam * cost/max(cost); ties go to the cheaper model."""
    norm = cost / cost.max()
    utility = scores - lam * norm - 1e-9 * norm
    picks: IntArray = np.argmax(utility, axis=1).astype(np.int64)
    return picks


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


@dataclass(frozen=True)
class RouterResult:
    name: str
    aiq: float
    accuracy: float  # at lambda = 0, the highest-quality setting
    cost: float  # dollars per query at lambda = 0
    apgr: float
    cpt50: float
    regret: float  # oracle accuracy minus this accuracy, both at lambda = 0
    entropy_bits: float  # of the models picked at lambda = 0
    curve: tuple[tuple[float, float, float], ...]  # (lambda, cost, quality)


def evaluate_router(
    name: str,
    scores: FloatArray,
    truth: FloatArray,
    cost: FloatArray,
    lambdas: Sequence[float],
    *,
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> RouterResult:
    rows = np.arange(len(truth))
    curve = []
    for lam in lambdas:
        picks = route(scores, cost, lam)
        curve.append((float(lam), float(cost[picks].mean()), float(truth[rows, picks].mean())))
    picks0 = route(scores, cost, 0.0)
    accuracy = float(truth[rows, picks0].mean())
    strong, weak = pair
    apgr_value = cpt50 = math.nan
    # On a small slice the pair can tie: then there is no gap and neither figure exists.
    if truth[:, strong].mean() != truth[:, weak].mean():
        fractions, recovered = strong_weak_curve(
            scores[:, strong] - scores[:, weak], truth[:, strong], truth[:, weak]
        )
        apgr_value, cpt50 = apgr(fractions, recovered), cpt(fractions, recovered)
    return RouterResult(
        name=name,
        aiq=aiq([(c, q) for _, c, q in curve], (float(cost.min()), float(cost.max()))),
        accuracy=accuracy,
        cost=float(cost[picks0].mean()),
        apgr=apgr_value,
        cpt50=cpt50,
        regret=oracle_accuracy - accuracy,
        entropy_bits=entropy_bits(picks0, len(cost)),
        curve=tuple(curve),
    )


def single_model_result(
    name: str, column: int, truth: FloatArray, cost: FloatArray, oracle_accuracy: float
) -> RouterResult:
    accuracy = float(truth[:, column].mean())
    point = (0.0, float(cost[column]), accuracy)
    return RouterResult(
        name=name,
        aiq=accuracy,  # one point: the curve is flat at its quality
        accuracy=accuracy,
        cost=float(cost[column]),
        apgr=math.nan,
        cpt50=math.nan,
        regret=oracle_accuracy - accuracy,
        entropy_bits=0.0,
        curve=(point,),
    )


# ---- choosing settings on validation -------------------------------------------------

PAPER_CONFIG = EagleConfig()
# The paper's setting, the same with draws, and smaller P / larger N: local ratings
# replayed from ~20 queries spread far less than a global rating fed every game, so
# at P=0.5 the global term dominates and most queries get the same model.
VALIDATION_GRID = (
    PAPER_CONFIG,
    EagleConfig(draws=True),
    *(EagleConfig(global_weight=p, neighbours=n) for p in (0.0, 0.1, 0.25) for n in (20, 50)),
)
# The quality model: ridge penalties around the one that fits a 384-d embedding
# to ~5k noisy 0/1 labels; the memory off, or sharp to broad kernels (at bandwidth
# 0.05 a neighbour at cosine 0.9 weighs e^-2 of a repeat, at 0.2 e^-0.5) with the
# ridge worth 1 to 10 observations.
QUALITY_PENALTIES = (3.0, 10.0, 30.0, 100.0)
QUALITY_CORRECTIONS: tuple[NeighbourCorrection | None, ...] = (
    None,
    *(
        NeighbourCorrection(neighbours=50, bandwidth=b, prior_weight=m)
        for b in (0.05, 0.1, 0.2)
        for m in (1.0, 3.0, 10.0)
    ),
)


@dataclass(frozen=True)
class ValidationSlice:
    """The held-out 20% of train every setting is chosen on (test is never looked at)."""

    fit_vectors: FloatMatrix
    fit_scores: FloatArray
    vectors: FloatMatrix
    truth: FloatArray
    cost: FloatArray
    lambdas: Sequence[float]
    pair: tuple[int, int]

    @classmethod
    def of(
        cls,
        data: RoutingData,
        train_vectors: FloatMatrix,
        lambdas: Sequence[float],
        pair: tuple[int, int],
    ) -> ValidationSlice:
        fit_rows, val_rows = validation_split(len(data.train_questions))
        return cls(
            fit_vectors=train_vectors[fit_rows],
            fit_scores=data.train_scores[fit_rows],
            vectors=train_vectors[val_rows],
            truth=data.train_scores[val_rows],
            cost=data.cost,
            lambdas=lambdas,
            pair=pair,
        )

    def score(self, scores: FloatArray) -> tuple[float, float]:
        """(AIQ, accuracy) of a router's scores on the slice."""
        oracle = float(self.truth.max(axis=1).mean())
        result = evaluate_router(
            "val",
            scores,
            self.truth,
            self.cost,
            self.lambdas,
            pair=self.pair,
            oracle_accuracy=oracle,
        )
        return result.aiq, result.accuracy


def choose_eagle_config(
    data: RoutingData, train_vectors: FloatMatrix, lambdas: Sequence[float], pair: tuple[int, int]
) -> tuple[EagleConfig, dict[str, tuple[float, float]]]:
    """Pick among VALIDATION_GRID on a held-out slice of train; test is never looked at."""
    held_out = ValidationSlice.of(data, train_vectors, lambdas, pair)
    found: dict[str, tuple[float, float]] = {}
    best: tuple[tuple[float, float], EagleConfig] | None = None
    for config in VALIDATION_GRID:
        eagle = fit_eagle(config, data.models, held_out.fit_vectors, held_out.fit_scores)
        key = held_out.score(eagle_scores(eagle, held_out.vectors))
        found[config.label()] = key
        if best is None or key > best[0]:
            best = (key, config)
    assert best is not None
    return best[1], found


def choose_quality_config(
    data: RoutingData, train_vectors: FloatMatrix, lambdas: Sequence[float], pair: tuple[int, int]
) -> tuple[QualityModelConfig, dict[QualityModelConfig, tuple[float, float]]]:
    """Pick the ridge penalty and the memory's setting on the same held-out slice of
    train as Eagle (best AIQ, then accuracy; the first in grid order on a tie)."""
    held_out = ValidationSlice.of(data, train_vectors, lambdas, pair)
    found: dict[QualityModelConfig, tuple[float, float]] = {}
    best: tuple[tuple[float, float], QualityModelConfig] | None = None
    for penalty in QUALITY_PENALTIES:
        # The memory only acts when scoring, so one fit serves every correction.
        model = fit_quality(
            QualityModelConfig(penalty=penalty, correction=None),
            data.models,
            held_out.fit_vectors,
            held_out.fit_scores,
        )
        for correction in QUALITY_CORRECTIONS:
            model.correction = correction
            key = held_out.score(model.predict_many(held_out.vectors))
            found[model.config] = key
            if best is None or key > best[0]:
                best = (key, model.config)
    assert best is not None
    return best[1], found


# The served estimate. Its prior variances also bound how far a few votes move everyone's
# routing in a cold system: at 0.25 a lone user cannot flip other users' routes, from 1 up
# ~4-14 votes of one user do (measured for issue 16). So the grid stops at 0.5, and a value
# above SAFE_PRIOR_VARIANCE is only taken for a clear validation gain.
ESTIMATOR_WEIGHT_VARIANCES = (0.05, 0.1, 0.25, 0.5)
ESTIMATOR_INTERCEPT_VARIANCES = (0.1, 0.25, 0.5)
SAFE_PRIOR_VARIANCE = 0.25
CLEAR_GAIN = 0.01
# Validation AIQ differences of a few thousandths between settings are noise on ~1.1k
# queries (a 500-query test AIQ has a bootstrap SD of 0.021): a setting replaces the
# current default only when it beats it by more than this.
NOISE_GAIN = 0.005
# Kernels around the defaults (50 neighbours, bandwidth 0.2, the shared estimate worth 3
# observations): bandwidth x prior weight first, then the neighbour count.
EVIDENCE_BANDWIDTHS = (0.1, 0.2, 0.4)
EVIDENCE_PRIOR_WEIGHTS = (1.0, 3.0, 10.0)
EVIDENCE_NEIGHBOURS = (20, 50, 100)

Key = tuple[float, float]  # validation (AIQ, accuracy)
Setting = TypeVar("Setting")


def prefer_incumbent(found: Mapping[Setting, Key], incumbent: Setting, margin: float) -> Setting:
    """The best of ``found`` (AIQ, then accuracy), unless its AIQ is within ``margin`` of
    the incumbent's: then the incumbent."""
    best = max(found, key=found.__getitem__)
    return best if found[best][0] > found[incumbent][0] + margin else incumbent


def choose_variance(found: Mapping[float, Key], default: float) -> float:
    """A prior variance: the best safe one (the default unless clearly beaten), then a
    larger one only for more than CLEAR_GAIN over that."""
    safe = {v: key for v, key in found.items() if v <= SAFE_PRIOR_VARIANCE}
    chosen = prefer_incumbent(safe, default, NOISE_GAIN)
    return prefer_incumbent(found, chosen, CLEAR_GAIN)


def choose_estimator_config(
    data: RoutingData, train_vectors: FloatMatrix, lambdas: Sequence[float], pair: tuple[int, int]
) -> tuple[EstimatorConfig, dict[EstimatorConfig, Key]]:
    """The served estimate's settings on the same held-out slice of train, in stages since
    a fit seeds ~4.5k queries x 9 models at O(d^2) each (~10 s): the weight variance at the
    default intercept variance; the intercept variance at that; then on that fit the
    evidence kernel (bandwidth x prior weight, then the neighbour count). Each stage keeps
    the current default unless it is beaten by more than NOISE_GAIN."""
    held_out = ValidationSlice.of(data, train_vectors, lambdas, pair)
    default = EstimatorConfig()
    found: dict[EstimatorConfig, Key] = {}
    fits: dict[tuple[float, float], QualityEstimator] = {}

    def score(weight: float, intercept: float, evidence: EvidenceConfig) -> Key:
        config = EstimatorConfig(weight, intercept, evidence=evidence)
        if config not in found:
            if (weight, intercept) not in fits:
                fits[weight, intercept] = fit_estimator(
                    config, data.models, held_out.fit_vectors, held_out.fit_scores
                )
            estimator = fits[weight, intercept]
            use_evidence(estimator, evidence)
            found[config] = held_out.score(estimator.predict_many(held_out.vectors)[0])
        return found[config]

    # Each stage also scores its incumbent, should a default lie off the grid.
    evidence = default.evidence
    weights = (*ESTIMATOR_WEIGHT_VARIANCES, default.weight_variance)
    weight = choose_variance(
        {w: score(w, default.intercept_variance, evidence) for w in weights},
        default.weight_variance,
    )
    intercepts = (*ESTIMATOR_INTERCEPT_VARIANCES, default.intercept_variance)
    intercept = choose_variance(
        {i: score(weight, i, evidence) for i in intercepts}, default.intercept_variance
    )
    kernels = [
        replace(evidence, bandwidth=b, prior_weight=m)
        for b in EVIDENCE_BANDWIDTHS
        for m in EVIDENCE_PRIOR_WEIGHTS
    ]
    evidence = prefer_incumbent(
        {e: score(weight, intercept, e) for e in (*kernels, evidence)}, evidence, NOISE_GAIN
    )
    counts = [replace(evidence, neighbours=n) for n in EVIDENCE_NEIGHBOURS]
    evidence = prefer_incumbent(
        {e: score(weight, intercept, e) for e in (*counts, evidence)}, evidence, NOISE_GAIN
    )
    return EstimatorConfig(weight, intercept, evidence=evidence), found


def strong_weak_pair(data: RoutingData) -> tuple[int, int]:
    """Strong: best on train. Weak: the cheapest, best on train among equals."""
    train_accuracy = data.train_scores.mean(axis=0)
    strong = int(np.argmax(train_accuracy))
    cheapest = np.flatnonzero(data.cost == data.cost.min())
    weak = int(cheapest[np.argmax(train_accuracy[cheapest])])
    return strong, weak


# ---- online protocol and timing ----------------------------------------------------------


@dataclass(frozen=True)
class OnlineStep:
    fraction: float
    queries: int
    added: int
    update_seconds: float
    aiq: float
    accuracy: float


def _online_steps(
    data: RoutingData,
    observe: Callable[[int, int], None],
    score: Callable[[], FloatArray],
    lambdas: Sequence[float],
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> list[OnlineStep]:
    """Eagle's protocol: learn from the first 70% of train (in its recorded order),
    then 15% more at a time, timing each update and scoring test after each."""
    n = len(data.train_questions)
    steps: list[OnlineStep] = []
    done = 0
    for fraction in ONLINE_FRACTIONS:
        upto = round(n * fraction)
        started = time.perf_counter()
        observe(done, upto)
        seconds = time.perf_counter() - started
        result = evaluate_router(
            "online",
            score(),
            data.test_scores,
            data.cost,
            lambdas,
            pair=pair,
            oracle_accuracy=oracle_accuracy,
        )
        steps.append(OnlineStep(fraction, upto, upto - done, seconds, result.aiq, result.accuracy))
        done = upto
    return steps


def run_online_protocol(
    data: RoutingData,
    config: EagleConfig,
    train_vectors: FloatMatrix,
    test_vectors: FloatMatrix,
    lambdas: Sequence[float],
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> list[OnlineStep]:
    """Eagle's ratings under the online protocol."""
    eagle = EagleRatings(
        data.models,
        train_vectors.shape[1],
        global_weight=config.global_weight,
        neighbours=config.neighbours,
        k=config.k,
    )

    def observe(start: int, stop: int) -> None:
        observe_all(eagle, config, train_vectors[start:stop], data.train_scores[start:stop])

    return _online_steps(
        data, observe, lambda: eagle_scores(eagle, test_vectors), lambdas, pair, oracle_accuracy
    )


def run_quality_online_protocol(
    data: RoutingData,
    config: QualityModelConfig,
    train_vectors: FloatMatrix,
    test_vectors: FloatMatrix,
    lambdas: Sequence[float],
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> list[OnlineStep]:
    """The quality model under the same protocol: each step is a run of O(d^2)
    updates, no refit."""
    model = QualityModel(data.models, train_vectors.shape[1], config)

    def observe(start: int, stop: int) -> None:
        observe_all_quality(model, train_vectors[start:stop], data.train_scores[start:stop])

    return _online_steps(
        data, observe, lambda: model.predict_many(test_vectors), lambdas, pair, oracle_accuracy
    )


@dataclass(frozen=True)
class ScoringTime:
    """Seconds to score one query (9 models), the embedding already made."""

    predict_p50: float  # QualityModel.predict: neighbour search, ridge and correction
    predict_p99: float
    search_p50: float  # the neighbour search alone


def time_scoring(model: QualityModel, vectors: FloatMatrix, *, repeats: int = 200) -> ScoringTime:
    sample = vectors[:repeats]
    for vector in sample[:10]:  # first calls pay for allocations and caches
        model.predict(vector)
    predict_times, search_times = [], []
    neighbours = model.correction.neighbours if model.correction is not None else 1
    for vector in sample:
        started = time.perf_counter()
        model.predict(vector)
        predict_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.index.search(vector, neighbours)
        search_times.append(time.perf_counter() - started)
    return ScoringTime(
        predict_p50=float(np.percentile(predict_times, 50)),
        predict_p99=float(np.percentile(predict_times, 99)),
        search_p50=float(np.percentile(search_times, 50)),
    )


# ---- the whole run ---------------------------------------------------------------------

QUALITY_NAME = "quality model"
QUALITY_NO_MEMORY = "quality model, no memory"
QUALITY_RATINGS = "quality, 1 rating/query"
QUALITY_PREFERENCES = "quality, 1 preference/query"
SERVED_NAME = "served (calibrated estimate)"
SERVED_RATINGS = "served, 1 rating/query"
SERVED_PREFERENCES = "served, 1 preference/query"
CALIBRATION_BINS = 10
# The live router's lambda unless an admin changes it: what the dashboard's diagram shows.
SERVED_LAMBDA = RouterConfig().cost_weight
CALIBRATION_LAMBDAS = (0.0, SERVED_LAMBDA)
CALIBRATION_SOURCE = "dcrouter test"


@dataclass(frozen=True)
class CalibrationFigures:
    """How a router's P(good) of the model it picks at ``lam`` compares on test with that
    model's recorded score (partial credits count as they are)."""

    name: str
    lam: float
    reliability: Reliability


def picked_calibration(
    name: str, predicted: FloatArray, truth: FloatArray, cost: FloatArray, lam: float
) -> CalibrationFigures:
    picks = route(predicted, cost, lam)
    rows = np.arange(len(truth))
    figures = reliability_bins(predicted[rows, picks], truth[rows, picks], bins=CALIBRATION_BINS)
    return CalibrationFigures(name, lam, figures)


@dataclass(frozen=True)
class ModelLevel:
    """A router's mean predicted P(good) of one model over the test queries, beside the
    model's real accuracy: preference-only feedback must not push these apart."""

    router: str
    model: str
    mean_predicted: float
    train_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class SubsetFigures:
    """A router's (AIQ, accuracy) on the test queries whose exact text is also in
    train, and on the others: a repeat's own recorded scores are in the memory."""

    name: str
    repeated: tuple[float, float]
    new: tuple[float, float]


@dataclass(frozen=True)
class EvalReport:
    models: list[str]
    strong: str
    weak: str
    eagle_config: EagleConfig
    validation: dict[str, tuple[float, float]]  # config label -> (AIQ, accuracy)
    results: list[RouterResult]
    online: list[OnlineStep]  # Eagle's
    seconds: float
    quality_config: QualityModelConfig
    quality_validation: dict[QualityModelConfig, tuple[float, float]]
    quality_online: list[OnlineStep]
    estimator_config: EstimatorConfig
    estimator_validation: dict[EstimatorConfig, tuple[float, float]]
    calibration: list[CalibrationFigures]
    levels: list[ModelLevel]
    estimator_seed_seconds: float  # per train query, 9 models' scores
    estimator_predict_seconds: float  # per test query, in a batch of test
    scoring: ScoringTime
    repeated_queries: int  # test queries whose exact text is in train
    subsets: list[SubsetFigures]  # empty when no test query, or every one, is repeated

    def result(self, name: str) -> RouterResult:
        return next(r for r in self.results if r.name == name)

    def calibration_of(self, name: str, lam: float) -> CalibrationFigures:
        return next(c for c in self.calibration if c.name == name and c.lam == lam)


def calibration_record(report: EvalReport) -> dict[str, object]:
    """The served estimate's reliability at the served lambda, as the dashboard reads it
    (``GET /admin/router/calibration``'s ``offline``)."""
    figures = report.calibration_of(SERVED_NAME, SERVED_LAMBDA)
    return {
        "source": CALIBRATION_SOURCE,
        "router": SERVED_NAME,
        "lambda": SERVED_LAMBDA,
        **figures.reliability,
    }


def run_offline_eval(
    data_dir: Path,
    embedder: Embedder,
    *,
    lambdas: Sequence[float] | None = None,
    output: Callable[[str], None] = print,
    train_limit: int | None = None,
    test_limit: int | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
) -> EvalReport:
    started = time.perf_counter()
    sweep = list(DEFAULT_LAMBDAS if lambdas is None else lambdas)
    data = load_routing_data(data_dir, train_limit=train_limit, test_limit=test_limit)
    # The live router's embedder: offline figures hold for what is served.
    train_vectors = embed_texts(data.train_questions, embedder, cache_dir=cache_dir)
    test_vectors = embed_texts(data.test_questions, embedder, cache_dir=cache_dir)
    pair = strong_weak_pair(data)
    truth, cost = data.test_scores, data.cost
    oracle_accuracy = float(truth.max(axis=1).mean())

    config, validation = choose_eagle_config(data, train_vectors, sweep, pair)
    eagle = fit_eagle(config, data.models, train_vectors, data.train_scores)
    paper = eagle if config == PAPER_CONFIG else None
    if paper is None:
        paper = fit_eagle(PAPER_CONFIG, data.models, train_vectors, data.train_scores)

    quality_config, quality_validation = choose_quality_config(data, train_vectors, sweep, pair)
    quality = fit_quality(quality_config, data.models, train_vectors, data.train_scores)
    quality_scores = quality.predict_many(test_vectors)
    quality.correction = None
    no_memory_scores = quality.predict_many(test_vectors)
    quality.correction = quality_config.correction
    partial = {
        name: fit_quality_partial(
            quality_config, data.models, train_vectors, data.train_scores, feedback
        ).predict_many(test_vectors)
        for name, feedback in ((QUALITY_RATINGS, "rating"), (QUALITY_PREFERENCES, "preference"))
    }
    estimator_config, estimator_validation = choose_estimator_config(
        data, train_vectors, sweep, pair
    )
    seeding = time.perf_counter()
    estimator = fit_estimator(estimator_config, data.models, train_vectors, data.train_scores)
    seed_seconds = (time.perf_counter() - seeding) / len(train_vectors)
    predicting = time.perf_counter()
    served_scores, _ = estimator.predict_many(test_vectors)
    predict_seconds = (time.perf_counter() - predicting) / len(test_vectors)
    served_partial = {
        name: fit_estimator_partial(
            estimator_config, data.models, train_vectors, data.train_scores, feedback
        ).predict_many(test_vectors)[0]
        for name, feedback in ((SERVED_RATINGS, "rating"), (SERVED_PREFERENCES, "preference"))
    }
    paper_scores = eagle_scores(paper, test_vectors)
    # Diagnostic only, never a router: how high the curve can go using only the
    # models below the top price, which is where most of AIQ's cost range lies.
    below_top = np.where(cost < cost.max(), truth, -1.0)
    scored = {
        "eagle": eagle_scores(eagle, test_vectors),
        "eagle (paper: P=0.5 N=20 K=32)": paper_scores,
        SERVED_NAME: served_scores,
        **served_partial,
        f"knn (k={KNN_NEIGHBOURS})": knn_scores(
            train_vectors, data.train_scores, test_vectors, KNN_NEIGHBOURS
        ),
        QUALITY_NAME: quality_scores,
        QUALITY_NO_MEMORY: no_memory_scores,
        **partial,
        "random": np.random.default_rng(SEED).random(truth.shape),
        "oracle": truth,
        "oracle, below top price only": below_top,
    }
    results = [
        evaluate_router(
            name, scores, truth, cost, sweep, pair=pair, oracle_accuracy=oracle_accuracy
        )
        for name, scores in scored.items()
    ]
    results += [
        single_model_result(model, i, truth, cost, oracle_accuracy)
        for i, model in enumerate(data.models)
    ]
    known = set(data.train_questions)
    repeated = np.array([q in known for q in data.test_questions], dtype=bool)
    subsets = []
    if 0 < repeated.sum() < len(repeated):
        for name in ("eagle", f"knn (k={KNN_NEIGHBOURS})", QUALITY_NAME, SERVED_NAME, "oracle"):
            figures = []
            for rows in (repeated, ~repeated):
                part = truth[rows]
                r = evaluate_router(
                    name,
                    scored[name][rows],
                    part,
                    cost,
                    sweep,
                    pair=pair,
                    oracle_accuracy=float(part.max(axis=1).mean()),
                )
                figures.append((r.aiq, r.accuracy))
            subsets.append(SubsetFigures(name, figures[0], figures[1]))
    online = run_online_protocol(
        data, config, train_vectors, test_vectors, sweep, pair, oracle_accuracy
    )
    quality_online = run_quality_online_protocol(
        data, quality_config, train_vectors, test_vectors, sweep, pair, oracle_accuracy
    )
    calibration = [
        picked_calibration(name, scored[name], truth, cost, lam)
        for name in (SERVED_NAME, QUALITY_NAME, SERVED_PREFERENCES, QUALITY_PREFERENCES)
        for lam in CALIBRATION_LAMBDAS
    ]
    levels = [
        ModelLevel(
            router=name,
            model=data.models[column],
            mean_predicted=float(scored[name][:, column].mean()),
            train_accuracy=float(data.train_scores[:, column].mean()),
            test_accuracy=float(truth[:, column].mean()),
        )
        for name in (SERVED_NAME, SERVED_PREFERENCES, QUALITY_PREFERENCES)
        for column in pair
    ]
    scoring = time_scoring(quality, test_vectors)
    report = EvalReport(
        models=data.models,
        strong=data.models[pair[0]],
        weak=data.models[pair[1]],
        eagle_config=config,
        validation=validation,
        results=results,
        online=online,
        seconds=time.perf_counter() - started,
        quality_config=quality_config,
        quality_validation=quality_validation,
        quality_online=quality_online,
        estimator_config=estimator_config,
        estimator_validation=estimator_validation,
        calibration=calibration,
        levels=levels,
        estimator_seed_seconds=seed_seconds,
        estimator_predict_seconds=predict_seconds,
        scoring=scoring,
        repeated_queries=int(repeated.sum()),
        subsets=subsets,
    )
    for line in format_report(report, len(data.train_questions), len(data.test_questions)):
        output(line)
    return report


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _quality_validation_lines(report: EvalReport) -> list[str]:
    penalties = sorted({c.penalty for c in report.quality_validation})
    corrections = list(dict.fromkeys(c.correction for c in report.quality_validation))
    lines = [
        f"validation ({VALIDATION_FRACTION:.0%} of train) AIQ / accuracy of the quality model "
        "(rows: neighbour memory; columns: ridge penalty):",
        f"  {'memory':<26}" + "".join(f"{p:>13g}" for p in penalties),
    ]
    for correction in corrections:
        label = "none" if correction is None else correction.label()
        cells = []
        for penalty in penalties:
            found = report.quality_validation.get(QualityModelConfig(penalty, correction))
            cells.append("-" if found is None else f"{found[0]:.3f}/{found[1]:.3f}")
        lines.append(f"  {label:<26}" + "".join(f"{c:>13}" for c in cells))
    lines.append(f"quality model uses: {report.quality_config.label()}")
    return lines


def _online_lines(name: str, steps: list[OnlineStep]) -> list[str]:
    lines = [f"online protocol ({name}): train used, added, update time, AIQ, accuracy"]
    for s in steps:
        per = 1e6 * s.update_seconds / max(1, s.added)
        lines.append(
            f"  {s.fraction:4.0%} {s.queries:6d} +{s.added:<6d} {s.update_seconds:7.3f} s "
            f"({per:.0f} us/query)  AIQ {s.aiq:.3f}  acc {s.accuracy:.3f}"
        )
    return lines


def _estimator_label(config: EstimatorConfig) -> str:
    e = config.evidence
    return (
        f"wv={config.weight_variance:g} iv={config.intercept_variance:g} "
        f"N={e.neighbours} bw={e.bandwidth:g} m={e.prior_weight:g}"
    )


def _estimator_validation_lines(report: EvalReport) -> list[str]:
    found = report.estimator_validation
    chosen = report.estimator_config
    best = max(found, key=found.__getitem__)
    lines = [
        "validation AIQ / accuracy of the served estimate (weight / intercept prior variance, "
        "evidence neighbours / bandwidth / prior weight), in the order searched:",
        *(
            f"  {_estimator_label(c):<36} {a:.4f} / {b:.4f}" + (" <- chosen" if c == chosen else "")
            for c, (a, b) in found.items()
        ),
        f"served estimate uses: {_estimator_label(chosen)} "
        f"({'the' if chosen == EstimatorConfig() else 'NOT the'} code defaults); "
        f"validation's best {_estimator_label(best)} is "
        f"{found[best][0] - found[chosen][0]:+.4f} AIQ from it (a default moves only for "
        f"> {NOISE_GAIN:g}, a prior variance above {SAFE_PRIOR_VARIANCE:g} only for > "
        f"{CLEAR_GAIN:g})",
    ]
    return lines


def _calibration_lines(report: EvalReport) -> list[str]:
    lines = [
        "",
        "reliability on test of P(good) of the model picked at lambda (predicted vs its score):",
    ]
    for figures in report.calibration:
        r = figures.reliability
        lines.append(
            f"  {figures.name} at lambda {figures.lam:g}: n {r['count']}, "
            f"ECE {_fmt(_or_nan(r['ece']))}, Brier {_fmt(_or_nan(r['brier']))}"
        )
        if figures.name in (SERVED_NAME, QUALITY_NAME):
            lines.append(f"    {'bin':<11} {'count':>5} {'predicted':>9} {'observed':>8}")
            lines += [
                f"    [{b['lower']:.1f}, {b['upper']:.1f}) {b['count']:>5} "
                f"{_fmt(_or_nan(b['mean_predicted'])):>9} {_fmt(_or_nan(b['observed_rate'])):>8}"
                for b in r["bins"]
                if b["count"]
            ]
    lines.append("mean predicted P(good) over test vs real accuracy (train / test):")
    lines += [
        f"  {level.router:<30} {level.model:<28} {level.mean_predicted:.3f}  "
        f"({level.train_accuracy:.3f} / {level.test_accuracy:.3f})"
        for level in report.levels
    ]
    return lines


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def format_report(report: EvalReport, n_train: int, n_test: int) -> list[str]:
    lines = [
        f"router eval: {n_train} train / {n_test} test queries, {len(report.models)} models; "
        f"cost assumes {EXPECTED_INPUT_TOKENS}+{EXPECTED_OUTPUT_TOKENS} tokens per call",
        f"validation ({VALIDATION_FRACTION:.0%} of train) AIQ / accuracy per Eagle setting:",
        *(f"  {label:<36} {a:.3f} / {b:.3f}" for label, (a, b) in report.validation.items()),
        f"eagle uses: {report.eagle_config.label()}",
        *_quality_validation_lines(report),
        *_estimator_validation_lines(report),
        f"APGR / CPT(50%) pair: strong {report.strong}, weak {report.weak}",
        "",
        f"{'router':<34} {'AIQ':>6} {'acc':>6} {'$/1k q':>7} {'APGR':>6} {'CPT50':>6} "
        f"{'regret':>7} {'H bits':>6}",
    ]
    for r in report.results:
        lines.append(
            f"{r.name:<34} {r.aiq:>6.3f} {r.accuracy:>6.3f} {1000 * r.cost:>7.4f} "
            f"{_fmt(r.apgr):>6} {_fmt(r.cpt50):>6} {r.regret:>7.3f} {r.entropy_bits:>6.2f}"
        )
    if report.subsets:
        lines += [
            "",
            f"test queries whose exact text is in train: {report.repeated_queries} of {n_test}; "
            "AIQ / accuracy on those, and on the rest:",
            *(
                f"  {s.name:<32} {s.repeated[0]:.3f} / {s.repeated[1]:.3f}   "
                f"{s.new[0]:.3f} / {s.new[1]:.3f}"
                for s in report.subsets
            ),
        ]
    for name in ("eagle", f"knn (k={KNN_NEIGHBOURS})", QUALITY_NAME, SERVED_NAME):
        curve = report.result(name).curve
        lines += ["", f"quality-cost curve, {name} (lambda: $/1k queries -> quality):"]
        seen: set[tuple[float, float]] = set()
        for lam, c, q in curve:
            if (c, q) not in seen:
                seen.add((c, q))
                lines.append(f"  lambda {lam:9.4f}: {1000 * c:.4f} -> {q:.3f}")
    lines += _calibration_lines(report)
    lines += ["", *_online_lines("eagle", report.online)]
    lines += _online_lines(QUALITY_NAME, report.quality_online)
    t = report.scoring
    lines += [
        f"scoring one query ({QUALITY_NAME}, {len(report.models)} models, embedding excluded): "
        f"p50 {1e3 * t.predict_p50:.3f} ms, p99 {1e3 * t.predict_p99:.3f} ms, "
        f"of which neighbour search p50 {1e3 * t.search_p50:.3f} ms",
        f"served estimate: seeding {1e6 * report.estimator_seed_seconds:.0f} us per train "
        f"query ({len(report.models)} models' scores), scoring "
        f"{1e3 * report.estimator_predict_seconds:.3f} ms per test query in a batch",
        f"total {report.seconds:.1f} s",
    ]
    return lines

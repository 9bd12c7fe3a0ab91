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

This module is the run: it loads the data, embeds it with the live router's embedder,
and drives the parts, each in its own module: the data and its splits
(router/routing_data.py), the routers under test (router/evaluated_routers.py), their
settings chosen on validation (router/validation_tuning.py), the lambda sweep and its
metrics (router/lambda_sweep.py), and the report and its text
(router/offline_eval_report.py). Here too: Eagle's online protocol and the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from router.elo import EagleRatings
from router.embeddings import DEFAULT_CACHE_DIR, FloatMatrix, embed_texts
from router.evaluated_routers import (
    KNN_NEIGHBOURS,
    PAPER_CONFIG,
    EagleConfig,
    eagle_scores,
    fit_eagle,
    fit_estimator,
    fit_estimator_partial,
    fit_quality,
    fit_quality_partial,
    knn_scores,
    observe_all,
    observe_all_quality,
)
from router.lambda_sweep import (
    DEFAULT_LAMBDAS,
    evaluate_router,
    picked_calibration,
    single_model_result,
    strong_weak_pair,
)
from router.offline_eval_report import (
    CALIBRATION_LAMBDAS,
    QUALITY_NAME,
    QUALITY_NO_MEMORY,
    QUALITY_PREFERENCES,
    QUALITY_RATINGS,
    SERVED_NAME,
    SERVED_PREFERENCES,
    SERVED_RATINGS,
    EvalReport,
    ModelLevel,
    OnlineStep,
    ScoringTime,
    SubsetFigures,
    format_report,
)
from router.quality_cost import FloatArray
from router.quality_model import QualityModel, QualityModelConfig
from router.query_embedder import Embedder
from router.routing_data import SEED, RoutingData, load_routing_data
from router.validation_tuning import (
    choose_eagle_config,
    choose_estimator_config,
    choose_quality_config,
)

# ---- online protocol and timing ----------------------------------------------------------

ONLINE_FRACTIONS = (0.70, 0.85, 1.00)


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

"""The quality model: online ridge (RLS) equal to its closed form, deterministic
replay, partial and pairwise feedback, the neighbour memory, input checks, and its
place in the offline evaluation (choice on validation, online protocol); the served
estimate's place there (choice on validation, routing, calibration)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from router.embeddings import FloatMatrix
from router.evaluated_routers import (
    fit_estimator,
    fit_estimator_partial,
    fit_quality,
    fit_quality_partial,
)
from router.lambda_sweep import evaluate_router, picked_calibration, strong_weak_pair
from router.offline_eval import run_quality_online_protocol, time_scoring
from router.online_ridge import OnlineRidge
from router.quality_model import NeighbourCorrection, QualityModel, QualityModelConfig
from router.routing_data import RoutingData, validation_split
from router.validation_tuning import (
    ESTIMATOR_WEIGHT_VARIANCES,
    NOISE_GAIN,
    QUALITY_CORRECTIONS,
    QUALITY_PENALTIES,
    choose_estimator_config,
    choose_quality_config,
    choose_variance,
    prefer_incumbent,
)

MODELS = ["a", "b", "c"]
Floats = npt.NDArray[np.float64]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> Floats:
    x = rng.normal(size=(n, d))
    rows: Floats = x / np.linalg.norm(x, axis=1, keepdims=True)
    return rows


def closed_form(
    x: Floats, y: Floats, w: Floats, penalty: float, intercept_penalty: float, prior: float
) -> tuple[Floats, Floats]:
    """argmin sum w (y - theta.[x,1])^2 + (theta - theta0)^T L (theta - theta0)."""
    features = np.hstack([x, np.ones((len(x), 1))])
    precision = np.full(features.shape[1], penalty)
    precision[-1] = intercept_penalty
    theta0 = np.zeros(features.shape[1])
    theta0[-1] = prior
    gram = features.T @ (features * w[:, None]) + np.diag(precision)
    inverse = np.linalg.inv(gram)
    theta: Floats = inverse @ (features.T @ (w * y) + precision * theta0)
    return theta, inverse


# ---- online ridge ------------------------------------------------------------------------


def test_online_updates_equal_the_closed_form_fit_under_partial_weighted_feedback() -> None:
    rng = np.random.default_rng(0)
    x = unit_rows(rng, 200, 8)
    truth = rng.normal(size=(3, 8))
    ridge = OnlineRidge(MODELS, 8, penalty=2.0)
    seen: dict[str, list[tuple[int, float, float]]] = {m: [] for m in MODELS}
    for i, row in enumerate(x):
        # Every third query is observed for all models, the others for a random subset,
        # with weights, as a live service would see them.
        chosen = MODELS if i % 3 == 0 else [m for m in MODELS if rng.random() < 0.5] or ["b"]
        weight = 1.0 if i % 2 else 0.5
        rewards = {m: float(row @ truth[MODELS.index(m)]) for m in chosen}
        ridge.observe(row, rewards, weight=weight)
        for m, r in rewards.items():
            seen[m].append((i, r, weight))
    for j, m in enumerate(MODELS):
        rows = np.array([i for i, _, _ in seen[m]])
        y = np.array([r for _, r, _ in seen[m]])
        w = np.array([wt for _, _, wt in seen[m]])
        theta, inverse = closed_form(x[rows], y, w, 2.0, ridge.intercept_penalty, 0.5)
        assert np.allclose(ridge.coefficients[j], theta, atol=1e-9)
        assert np.allclose(ridge.inverse(m), inverse, atol=1e-9)
        assert ridge.observations[j] == len(rows)
    # Partial feedback split the shared inverse: one per model now.
    assert sorted(map(sorted, ridge.groups)) == [["a"], ["b"], ["c"]]


def test_full_feedback_keeps_one_shared_inverse_and_the_prior_before_any_data() -> None:
    ridge = OnlineRidge(MODELS, 4, penalty=1.0, prior_mean=0.3)
    assert ridge.predict(np.ones(4)) == pytest.approx(dict.fromkeys(MODELS, 0.3))
    rng = np.random.default_rng(1)
    for row in unit_rows(rng, 20, 4):
        ridge.observe(row, {"a": 1.0, "b": 0.0, "c": 0.5})
    assert ridge.groups == [MODELS]
    # The inverse is symmetric exactly, not just nearly: no drift over many updates.
    p = ridge.inverse("a")
    assert np.array_equal(p, p.T)


def test_replaying_the_same_observations_rebuilds_the_same_numbers() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(120, 16))
    plan = [(v, MODELS[i % 3], float(rng.random())) for i, v in enumerate(vectors)]

    def build() -> QualityModel:
        model = QualityModel(MODELS, 16, QualityModelConfig(penalty=3.0))
        for i, (vector, m, reward) in enumerate(plan):
            if i % 10 == 0:
                model.observe_pairwise(vector, "a", "c")
            elif i % 7 == 0:
                model.observe_rewards(vector, {"a": reward, "b": 1 - reward, "c": 0.5})
            else:
                model.observe(vector, m, reward)
        return model

    first, second = build(), build()
    assert np.array_equal(first.ridge.coefficients, second.ridge.coefficients)
    for m in MODELS:
        assert np.array_equal(first.ridge.inverse(m), second.ridge.inverse(m))
    queries = rng.normal(size=(30, 16))
    assert np.array_equal(first.predict_many(queries), second.predict_many(queries))


# ---- the quality model ---------------------------------------------------------------------


def test_a_rating_moves_only_the_rated_model() -> None:
    rng = np.random.default_rng(3)
    model = QualityModel(MODELS, 8, QualityModelConfig(penalty=1.0, correction=None))
    for row in unit_rows(rng, 30, 8):
        model.observe_rewards(row, {"a": 0.5, "b": 0.5, "c": 0.5})
    query = unit_rows(rng, 1, 8)[0]
    before = model.predict(query)
    model.observe(query, "b", 1.0)
    after = model.predict(query)
    assert after["b"] > before["b"] + 0.01
    assert after["a"] == before["a"] and after["c"] == before["c"]
    model.observe(query, "b", 0.0)
    model.observe(query, "b", 0.0)
    assert model.predict(query)["b"] < after["b"]


def test_a_preference_raises_the_winner_and_lowers_the_loser() -> None:
    rng = np.random.default_rng(4)
    model = QualityModel(MODELS, 8, QualityModelConfig(penalty=1.0))
    for row in unit_rows(rng, 30, 8):
        model.observe_rewards(row, {"a": 0.5, "b": 0.5, "c": 0.5})
    query = unit_rows(rng, 1, 8)[0]
    before = model.predict(query)
    model.observe_pairwise(query, "c", "a")
    after = model.predict(query)
    assert after["c"] > before["c"] and after["a"] < before["a"]
    assert after["b"] == pytest.approx(before["b"], abs=1e-12)
    with pytest.raises(ValueError, match="two different models"):
        model.observe_pairwise(query, "a", "a")


def test_the_memory_lets_a_repeated_query_outweigh_the_linear_trend() -> None:
    rng = np.random.default_rng(5)
    vectors = unit_rows(rng, 300, 12)
    model = QualityModel(
        MODELS, 12, QualityModelConfig(penalty=10.0, correction=NeighbourCorrection(20, 0.05, 1.0))
    )
    # Model "a" is right on half of the space, wrong on the other half...
    for v in vectors:
        model.observe_rewards(v, {"a": float(v[0] > 0), "b": 0.5, "c": 0.5})
    # ...except on one query, where it was wrong although the trend says right.
    odd = vectors[np.argmax(vectors[:, 0])]
    model.observe(odd, "a", 0.0)
    with_memory = model.predict(odd)["a"]
    model.correction = None
    ridge_only = model.predict(odd)["a"]
    assert ridge_only > 0.6
    assert with_memory < ridge_only - 0.2
    # Far from it, the memory changes little.
    model.correction = NeighbourCorrection(20, 0.05, 1.0)
    far = -odd
    corrected = model.predict(far)["a"]
    model.correction = None
    assert corrected == pytest.approx(model.predict(far)["a"], abs=0.05)


def test_predictions_lie_in_the_unit_interval_and_batch_equals_single() -> None:
    rng = np.random.default_rng(6)
    model = QualityModel(MODELS, 6, QualityModelConfig(penalty=0.1))
    assert model.predict(np.ones(6)) == pytest.approx(dict.fromkeys(MODELS, 0.5))
    for v in rng.normal(size=(40, 6)):
        model.observe_rewards(v, {"a": 1.0, "b": 0.0, "c": float(v[0] > 0)})
    queries = rng.normal(size=(300, 6)) * 5  # scale must not matter
    batch = model.predict_many(queries)
    assert batch.min() >= 0.0 and batch.max() <= 1.0
    assert batch.shape == (300, 3)
    for row, q in zip(batch[:5], queries[:5], strict=True):
        single = model.predict(q)
        # Equal up to the float32 cosines, which BLAS rounds differently for one row.
        assert [single[m] for m in MODELS] == pytest.approx(list(row), abs=1e-6)
    assert len(model) == 40


def test_bad_input_raises_clear_errors_and_changes_nothing() -> None:
    model = QualityModel(MODELS, 4, QualityModelConfig(penalty=1.0))
    model.observe_rewards(np.ones(4), {"a": 1.0, "b": 0.0, "c": 0.5})
    coefficients = model.ridge.coefficients.copy()
    bad_calls: list[tuple[Callable[[], object], str]] = [
        (lambda: model.observe(np.ones(3), "a", 1.0), "4-dimensional"),
        (lambda: model.observe([1.0, math.nan, 0.0, 0.0], "a", 1.0), "finite"),
        (lambda: model.observe(np.ones(4), "zz", 1.0), "unknown model"),
        (lambda: model.observe(np.ones(4), "a", 1.5), r"\[0, 1\]"),
        (lambda: model.observe(np.ones(4), "a", math.nan), r"\[0, 1\]"),
        (lambda: model.observe(np.ones(4), "a", 1.0, weight=0.0), "weight"),
        (lambda: model.observe_rewards(np.ones(4), {}), "at least one model"),
        (lambda: model.observe_rewards(np.ones(4), {"a": 1.0, "b": -0.1}), "'b'"),
        (lambda: model.predict(np.ones(5)), "4-dimensional"),
        (lambda: model.predict_many(np.ones((2, 5))), "4 dimensions"),
    ]
    for call, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            call()
    assert np.array_equal(model.ridge.coefficients, coefficients)
    assert len(model) == 1
    with pytest.raises(ValueError, match="neighbours"):
        NeighbourCorrection(neighbours=0)
    with pytest.raises(ValueError, match="bandwidth"):
        NeighbourCorrection(bandwidth=0.0)
    with pytest.raises(ValueError, match="prior_weight"):
        NeighbourCorrection(prior_weight=-1.0)
    with pytest.raises(ValueError, match="penalty"):
        OnlineRidge(MODELS, 4, penalty=0.0)
    with pytest.raises(ValueError, match="distinct"):
        OnlineRidge(["a", "a"], 4, penalty=1.0)
    with pytest.raises(ValueError, match="at least one model"):
        OnlineRidge([], 4, penalty=1.0)


# ---- in the offline evaluation ------------------------------------------------------------------


def synthetic_data(
    rng: np.random.Generator, n_train: int, n_test: int
) -> tuple[RoutingData, FloatMatrix, FloatMatrix]:
    """Three models: "a" right on one half of the space, "b" on the other, "c" (dear)
    right on 70% everywhere; vectors are the embeddings."""
    d = 16
    vectors = unit_rows(rng, n_train + n_test, d)
    side = vectors[:, 0] > 0
    scores = np.column_stack(
        [
            (side & (rng.random(len(side)) < 0.9)).astype(float),
            (~side & (rng.random(len(side)) < 0.9)).astype(float),
            (rng.random(len(side)) < 0.7).astype(float),
        ]
    )
    data = RoutingData(
        models=MODELS,
        cost=np.array([0.1, 0.1, 1.0]),
        train_questions=[f"q{i}" for i in range(n_train)],
        train_scores=scores[:n_train],
        test_questions=[f"t{i}" for i in range(n_test)],
        test_scores=scores[n_train:],
    )
    embeddings = vectors.astype(np.float32)
    return data, embeddings[:n_train], embeddings[n_train:]


def test_validation_split_is_seeded_disjoint_and_ordered() -> None:
    fit_rows, val_rows = validation_split(100)
    assert len(val_rows) == 20 and len(fit_rows) == 80
    assert not set(fit_rows) & set(val_rows)
    assert list(fit_rows) == sorted(fit_rows)
    again = validation_split(100)
    assert np.array_equal(again[0], fit_rows) and np.array_equal(again[1], val_rows)


def test_the_quality_router_learns_who_is_good_where_and_is_chosen_on_validation() -> None:
    rng = np.random.default_rng(7)
    data, train_vectors, test_vectors = synthetic_data(rng, 600, 200)
    lambdas = [0.0, 0.1, 1.0, 10.0]
    pair = strong_weak_pair(data)
    config, found = choose_quality_config(data, train_vectors, lambdas, pair)
    assert len(found) == len(QUALITY_PENALTIES) * len(QUALITY_CORRECTIONS)
    assert found[config] == max(found.values())
    oracle = float(data.test_scores.max(axis=1).mean())
    model = fit_quality(config, data.models, train_vectors, data.train_scores)
    result = evaluate_router(
        "q",
        model.predict_many(test_vectors),
        data.test_scores,
        data.cost,
        lambdas,
        pair=pair,
        oracle_accuracy=oracle,
    )
    # The cheap specialist of each half (right 90% there) beats the dear generalist
    # (70% everywhere); only near the boundary does the dear one win at lambda 0.
    assert result.aiq > 0.8 and result.accuracy > 0.75
    # One rating per query is enough to learn the same split, more slowly.
    partial = fit_quality_partial(config, data.models, train_vectors, data.train_scores, "rating")
    assert partial.ridge.groups != [MODELS]
    partial_result = evaluate_router(
        "p",
        partial.predict_many(test_vectors),
        data.test_scores,
        data.cost,
        lambdas,
        pair=pair,
        oracle_accuracy=oracle,
    )
    assert partial_result.aiq > 0.75
    with pytest.raises(ValueError, match="feedback"):
        fit_quality_partial(config, data.models, train_vectors, data.train_scores, "stars")
    steps = run_quality_online_protocol(
        data, config, train_vectors, test_vectors, lambdas, pair, oracle
    )
    assert [s.queries for s in steps] == [420, 510, 600]
    assert sum(s.added for s in steps) == 600
    # The state after the last step is the one-shot fit: same observations, same order.
    assert steps[-1].accuracy == pytest.approx(result.accuracy)
    timing = time_scoring(model, test_vectors, repeats=20)
    assert timing.search_p50 > 0 and 0 < timing.predict_p50 <= timing.predict_p99


# ---- the served estimate in the offline evaluation ----------------------------------------


def test_a_default_moves_only_for_a_clear_validation_gain() -> None:
    found = {0.1: (0.600, 0.6), 0.25: (0.598, 0.6), 0.5: (0.607, 0.6)}
    # 0.1 beats the default by 0.002, under the noise margin; 0.5 by 0.009 over the safe
    # choice, under the clear gain a larger prior variance needs.
    assert prefer_incumbent(found, 0.25, NOISE_GAIN) == 0.5
    assert choose_variance(found, 0.25) == 0.25
    assert choose_variance({**found, 0.1: (0.605, 0.6)}, 0.25) == 0.1
    assert choose_variance({**found, 0.5: (0.620, 0.6)}, 0.25) == 0.5


def test_the_served_estimate_is_chosen_on_validation_routes_well_and_stays_calibrated() -> None:
    rng = np.random.default_rng(7)
    data, train_vectors, test_vectors = synthetic_data(rng, 600, 200)
    lambdas = [0.0, 0.1, 1.0, 10.0]
    pair = strong_weak_pair(data)
    config, found = choose_estimator_config(data, train_vectors, lambdas, pair)
    # Weight variances, then intercept variances (one shared with the first stage), then
    # bandwidth x prior weight (one shared) and neighbour counts (one shared).
    assert len(found) == 4 + 2 + 8 + 2
    assert config in found
    assert {c.weight_variance for c in found} == set(ESTIMATOR_WEIGHT_VARIANCES)
    oracle = float(data.test_scores.max(axis=1).mean())
    estimator = fit_estimator(config, data.models, train_vectors, data.train_scores)
    quality, std = estimator.predict_many(test_vectors)
    assert ((quality > 0) & (quality < 1)).all() and (std > 0).all()
    result = evaluate_router(
        "s", quality, data.test_scores, data.cost, lambdas, pair=pair, oracle_accuracy=oracle
    )
    assert result.aiq > 0.8 and result.accuracy > 0.75
    # Its P(good) of the model it picks is a probability: the picked model is right about
    # as often as it says (from 480 queries the prior's shrinkage leaves it a little shy).
    for lam in (0.0, 0.1):
        figures = picked_calibration("s", quality, data.test_scores, data.cost, lam)
        assert figures.reliability["count"] == 200
        ece = figures.reliability["ece"]
        assert ece is not None and ece < 0.15
    # Fed one preference per query, the levels of the dear generalist (right 70%) and a
    # specialist (right 45% over the whole space) stay near the truth, not at 0 and 1.
    preferred = fit_estimator_partial(
        config, data.models, train_vectors, data.train_scores, "preference"
    )
    levels = preferred.predict_many(test_vectors)[0].mean(axis=0)
    truth = data.train_scores.mean(axis=0)
    assert np.abs(levels - truth).max() < 0.1
    rated = fit_estimator_partial(config, data.models, train_vectors, data.train_scores, "rating")
    assert rated.posterior.evidence.sum() == pytest.approx(600)
    with pytest.raises(ValueError, match="feedback"):
        fit_estimator_partial(config, data.models, train_vectors, data.train_scores, "stars")

"""UELLM's pieces: the online output-length predictor and the load ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.length_predictor import OutputLengthPredictor
from router.load import LoadTracker
from tests.clock import FakeClock


def unit(seed: int, dimensions: int = 6) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dimensions)
    return vector / np.linalg.norm(vector)


def test_a_model_without_observations_predicts_the_prior_capped_by_max_tokens() -> None:
    predictor = OutputLengthPredictor(6, prior_tokens=100)
    assert predictor.predict("m", unit(0), prompt_tokens=10, max_tokens=500) == 100
    assert predictor.predict("m", unit(0), prompt_tokens=10, max_tokens=30) == 30


def test_online_updates_equal_the_closed_form_ridge_fit() -> None:
    predictor = OutputLengthPredictor(6, prior_tokens=50, ridge=2.0)
    xs, ys = [], []
    for i in range(40):
        vector, tokens = unit(i), 5 + 7 * i
        predictor.observe("m", vector, prompt_tokens=i, completion_tokens=tokens)
        xs.append(np.concatenate([vector, [1.0, math.log1p(i) / 8.0]]))
        ys.append(math.log1p(tokens) - math.log1p(50))
    x, y = np.array(xs), np.array(ys)
    weights = np.linalg.solve(x.T @ x + 2.0 * np.eye(x.shape[1]), x.T @ y)
    query = unit(99)
    expected = math.expm1(
        math.log1p(50) + np.concatenate([query, [1.0, math.log1p(3) / 8]]) @ weights
    )
    assert predictor.predict("m", query, prompt_tokens=3, max_tokens=10_000) == round(expected)


def test_each_model_learns_its_own_lengths_by_topic() -> None:
    predictor = OutputLengthPredictor(6)
    short, long = unit(1), unit(2)
    for _ in range(50):
        predictor.observe("a", short, prompt_tokens=10, completion_tokens=8)
        predictor.observe("a", long, prompt_tokens=10, completion_tokens=400)
    assert predictor.predict("a", short, prompt_tokens=10, max_tokens=1000) < 20
    assert predictor.predict("a", long, prompt_tokens=10, max_tokens=1000) > 250
    assert predictor.predict("b", long, prompt_tokens=10, max_tokens=1000) == 100
    assert predictor.observations("a") == 100


def test_bad_input_is_refused() -> None:
    predictor = OutputLengthPredictor(6)
    with pytest.raises(ValueError, match="6-dimensional"):
        predictor.observe("m", np.ones(5), prompt_tokens=1, completion_tokens=1)
    with pytest.raises(ValueError, match="negative"):
        predictor.observe("m", unit(0), prompt_tokens=1, completion_tokens=-1)
    with pytest.raises(ValueError):
        OutputLengthPredictor(0)


def test_the_ledger_counts_requests_in_flight_and_learns_speed() -> None:
    tracker = LoadTracker(default_capacity=2)
    first = tracker.started("m", 50)
    second = tracker.started("m", 30)
    load = tracker.snapshot("m")
    assert (load.in_flight, load.queued_tokens, load.saturated) == (2, 80, True)
    tracker.finished(first, first_token_seconds=0.1, total_seconds=1.1, completion_tokens=11)
    tracker.finished(first)  # closing twice changes nothing
    load = tracker.snapshot("m")
    assert (load.in_flight, load.queued_tokens) == (1, 30)
    # The measured 0.1 s per token pulls the default (0.05) up.
    assert load.seconds_per_token > 0.05
    tracker.finished(second)  # failed: closed, nothing learnt
    assert tracker.snapshot("m").seconds_per_token == load.seconds_per_token


def test_predicted_latency_grows_with_the_queue_beyond_capacity() -> None:
    tracker = LoadTracker(default_capacity=2)
    idle = tracker.snapshot("m").predicted_latency(100)
    for _ in range(2):
        tracker.started("m", 100)
    full = tracker.snapshot("m").predicted_latency(100)
    for _ in range(4):
        tracker.started("m", 100)
    queued = tracker.snapshot("m").predicted_latency(100)
    assert idle < full < queued


def test_a_ticket_never_closed_stops_counting_after_its_lifetime() -> None:
    clock = FakeClock()
    tracker = LoadTracker(ticket_lifetime=60, clock=clock)
    tracker.started("m", 10)
    clock.advance(60)
    assert tracker.snapshot("m").in_flight == 1
    clock.advance(0.001)
    load = tracker.snapshot("m")
    assert (load.in_flight, load.queued_tokens) == (0, 0)

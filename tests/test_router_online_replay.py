"""The online replay (router/online_replay.py) on a small synthetic data set: two topics, a
cheap model good at one, a dear model good at the other, a third middling everywhere."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.online_replay import (
    CHECKPOINTS,
    LookupEmbedder,
    ReplayData,
    adversarial_user,
    new_router,
    replay_data,
    replay_stream,
    run_online_eval,
)
from router.routing_data import RoutingData

DIMENSIONS = 8


def synthetic(train: int = 120, test: int = 40, seed: int = 1) -> ReplayData:
    rng = np.random.default_rng(seed)
    centres = np.eye(DIMENSIONS)[:2]

    def split(n: int, prefix: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        topic = rng.integers(2, size=n)
        vectors = centres[topic] + 0.3 * rng.standard_normal((n, DIMENSIONS))
        good = np.where(topic[:, None] == 0, [0.9, 0.2, 0.6], [0.2, 0.9, 0.6])
        scores = (rng.random((n, 3)) < good).astype(float)
        return [f"{prefix} {i} topic {t}" for i, t in enumerate(topic)], vectors, scores

    train_q, train_v, train_s = split(train, "train")
    test_q, test_v, test_s = split(test, "test")
    data = RoutingData(
        models=["cheap", "dear", "middle"],
        cost=np.array([1e-5, 1e-4, 5e-5]),
        train_questions=train_q,
        train_scores=train_s,
        test_questions=test_q,
        test_scores=test_s,
    )
    return replay_data(data, train_v.astype(np.float32), test_v.astype(np.float32), "toy")


def test_the_stream_is_scored_after_every_tenth_with_feedback_only_on_routed_answers() -> None:
    replay = synthetic()
    router = new_router(replay)
    result = replay_stream(router, replay, lambda i: f"user-{i % 5}", preference_fraction=0.0)
    assert len(result.points) == CHECKPOINTS
    assert [p.queries for p in result.points][-1] == len(replay.data.train_questions)
    assert [p.fraction for p in result.points] == sorted(p.fraction for p in result.points)
    # One rating per query and nothing else: partial feedback, as in production.
    assert router.last_feedback_id == len(replay.data.train_questions)
    assert router.estimator.influence.votes("user-0") == len(range(0, 120, 5))
    for point in result.points:
        assert 0.0 <= point.shared.aiq <= 1.0 and math.isfinite(point.shared.aiq)
        assert 0.0 <= point.explored <= 1.0
        assert point.user is None


def test_preferences_come_on_top_of_ratings() -> None:
    replay = synthetic()
    router = new_router(replay)
    replay_stream(router, replay, lambda i: "one", preference_fraction=1.0)
    n = len(replay.data.train_questions)
    # Every query asked for a preference too; ties (equal scores) are skipped.
    assert n < router.last_feedback_id < 2 * n


def test_the_adversary_is_counted_on_the_probes_and_bounded() -> None:
    replay = synthetic()
    router = new_router(replay)
    replay_stream(router, replay, lambda i: f"user-{i}")
    result = adversarial_user(router, replay, votes=50, probes=40)
    assert (result.target, result.victim) == ("cheap", "middle")
    assert result.probes == 40
    assert 0 <= result.changed <= result.probes
    assert 0 <= result.to_target_before <= 40 and 0 <= result.to_target_after <= 40
    # 50 votes in a burst count as one in the shared estimate (router/user_influence.py).
    assert result.shared_weight == 1.0
    assert router.estimator.influence.votes("adversary") == 50


def test_two_runs_give_the_same_numbers() -> None:
    lines: list[list[str]] = [[], []]
    reports = [run_online_eval(synthetic(), output=lines[k].append) for k in range(2)]
    a, b = reports
    assert a.offline == b.offline and a.best_single == b.best_single
    assert a.solo.points == b.solo.points
    assert a.solo_quintiles == b.solo_quintiles
    for x, y in zip(a.shared, b.shared, strict=True):
        assert x.stream.points == y.stream.points
        assert (x.adversary, x.lone, x.experts) == (y.adversary, y.lone, y.experts)
    assert len(a.shared) == 2 and all(len(s.stream.points) == CHECKPOINTS for s in a.shared)
    assert a.solo.points[-1].user is not None  # the one user's own view is scored
    text = "\n".join(lines[0])
    for heading in ("1a.", "1b.", "2.", "3a.", "3b.", "4a.", "4b."):
        assert f"\n{heading} " in text


def test_the_lookup_embedder_knows_only_its_texts() -> None:
    embedder = LookupEmbedder(["a"], np.ones((1, 3), dtype=np.float32), "toy")
    assert embedder.embed("a").shape == (3,)
    with pytest.raises(KeyError, match="no precomputed vector"):
        embedder.embed("b")

"""Eagle's ELO math, the neighbour index, the evaluation metrics, and a small
end-to-end offline evaluation on a slice of dcrouter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from router.elo import (
    EagleRatings,
    EloRatings,
    GameLog,
    LocalElo,
    Outcome,
    pairwise_outcomes,
    replay_games,
    win_probability_vs_field,
)
from router.embeddings import QueryIndex, texts_key
from router.lambda_sweep import route
from router.offline_eval import run_offline_eval
from router.offline_eval_report import (
    CALIBRATION_SOURCE,
    SERVED_LAMBDA,
    SERVED_NAME,
    calibration_record,
)
from router.quality_cost import (
    aiq,
    apgr,
    cpt,
    entropy_bits,
    nondecreasing_hull,
    strong_weak_curve,
)
from router.query_embedder import OnnxQueryEmbedder
from serving.routing_schemas import OfflineCalibrationPublic
from tests.datasets import DCROUTER, require
from tests.server import prepared_model_store

# ---- ELO -------------------------------------------------------------------------------


def test_fresh_ratings_expect_even_odds_and_are_symmetric() -> None:
    elo = EloRatings(["a", "b"])
    assert elo["a"] == elo["b"] == 1000.0
    assert elo.expected("a", "b") == pytest.approx(0.5)
    elo.ratings["a"] = 1400.0
    # 400 points is odds of 10 to 1 by definition.
    assert elo.expected("a", "b") == pytest.approx(10 / 11)
    assert elo.expected("a", "b") + elo.expected("b", "a") == pytest.approx(1.0)


def test_a_win_moves_both_ratings_by_k_times_surprise_and_keeps_the_sum() -> None:
    elo = EloRatings(["a", "b", "c"])
    elo.update("a", "b")
    assert elo["a"] == pytest.approx(1016.0)  # K=32, expected 0.5
    assert elo["b"] == pytest.approx(984.0)
    assert elo["c"] == 1000.0
    assert sum(elo.ratings.values()) == pytest.approx(3000.0)
    # The favourite winning again gains less than the first, surprising, win.
    before = elo["a"]
    elo.update("a", "b")
    assert 0 < elo["a"] - before < 16.0


def test_k_scales_the_step() -> None:
    small, large = EloRatings(["a", "b"], k=8), EloRatings(["a", "b"], k=64)
    small.update("a", "b")
    large.update("a", "b")
    assert small["a"] - 1000 == pytest.approx(4.0)
    assert large["a"] - 1000 == pytest.approx(32.0)


def test_draws_pull_ratings_together_and_do_nothing_between_equals() -> None:
    elo = EloRatings(["a", "b"])
    elo.update("a", "b", draw=True)
    assert elo["a"] == elo["b"] == 1000.0
    elo.ratings.update(a=1200.0, b=1000.0)
    elo.update("a", "b", draw=True)
    assert elo["a"] < 1200.0
    assert elo["b"] > 1000.0
    elo2 = EloRatings(["a", "b"])
    elo2.ratings.update(a=1200.0, b=1000.0)
    elo2.update("b", "a", draw=True)  # order of a draw does not matter
    assert elo2.ratings == pytest.approx(elo.ratings)


def test_pairwise_outcomes_from_scores() -> None:
    scores = {"a": 1.0, "b": 0.0, "c": 0.0}
    skipped = pairwise_outcomes(scores, draws=False)
    assert skipped == [Outcome("a", "b"), Outcome("a", "c")]
    with_draws = pairwise_outcomes(scores, draws=True)
    assert Outcome("b", "c", draw=True) in with_draws
    assert len(with_draws) == 3


def test_local_elo_replays_only_the_nearest_queries() -> None:
    local = LocalElo(["a", "b"], dimensions=2, neighbours=2)
    # Two queries near the x axis say "a" wins; one far away says "b" wins.
    local.add([1.0, 0.0], [Outcome("a", "b")])
    local.add([0.9, 0.1], [Outcome("a", "b")])
    local.add([0.0, 1.0], [Outcome("b", "a")])
    ratings, nearest = local.ratings([1.0, 0.05])
    assert sorted(nearest) == [0, 1]
    assert ratings["a"] > ratings["b"]
    far, nearest_far = local.ratings([0.0, 1.0])
    assert nearest_far[0] == 2
    # Replay starts fresh every time: the same neighbours give the same ratings.
    assert local.ratings([1.0, 0.05])[0] == ratings
    assert far["a"] + far["b"] == pytest.approx(2000.0)


def test_the_served_game_log_replays_exactly_as_the_reference_replay() -> None:
    # The router's flat game log (model numbers) must give the ratings the paper's replay
    # over Outcome objects gives, draws and replay order included.
    models = ["a", "b", "c"]
    games = [
        [Outcome("a", "b"), Outcome("c", "a", draw=True)],
        [],
        [Outcome("b", "c"), Outcome("b", "a"), Outcome("a", "c")],
        [Outcome("c", "b")],
    ]
    log = GameLog(models)
    for outcomes in games:
        log.append(outcomes)
    restored = GameLog.from_state(models, log.state())
    for ids in ([0], [2, 0, 3], [3, 1, 2, 0], []):
        expected = replay_games(models, games, ids, k=24.0, initial=1200.0)
        assert log.replay(ids, k=24.0, initial=1200.0) == pytest.approx(expected, abs=1e-9)
        assert restored.replay(ids, k=24.0, initial=1200.0) == pytest.approx(expected, abs=1e-9)
    assert log.replay([2, 0], k=24.0, initial=1200.0) != log.replay([0, 2], k=24.0, initial=1200.0)


def test_eagle_blends_global_and_local_with_p() -> None:
    eagle = EagleRatings(["a", "b"], dimensions=2, global_weight=0.25, neighbours=1)
    for _ in range(5):
        eagle.observe([1.0, 0.0], [Outcome("a", "b")])
    eagle.observe([0.0, 1.0], [Outcome("b", "a")])
    blended, nearest = eagle.scores([0.0, 1.0])
    assert nearest == [5]
    local = eagle.local.replay([5])
    for m in ("a", "b"):
        expected = 0.25 * eagle.global_elo[m] + 0.75 * local[m]
        assert blended[m] == pytest.approx(expected)
    with pytest.raises(ValueError):
        EagleRatings(["a"], dimensions=2, global_weight=1.5)


def test_win_probability_vs_field_orders_like_the_ratings() -> None:
    p = win_probability_vs_field({"a": 1100.0, "b": 1000.0, "c": 900.0})
    assert p["a"] > p["b"] > p["c"]
    assert p["b"] == pytest.approx(0.5)
    assert all(0 < v < 1 for v in p.values())


# ---- neighbour index ---------------------------------------------------------------------


def test_query_index_returns_nearest_by_cosine_in_order() -> None:
    index = QueryIndex(3)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 3))
    assert list(index.add(vectors[:30])) == list(range(30))
    assert list(index.add(vectors[30:])) == list(range(30, 50))  # grows past its buffer
    assert len(index) == 50
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-6)
    query = rng.normal(size=(2, 3))
    ids, sims = index.search(query * 7.0, 5)  # scale of the query must not matter
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ normed.T
    for row in range(2):
        assert list(ids[row]) == list(np.argsort(-cosines[row])[:5])
        assert np.allclose(sims[row], np.sort(cosines[row])[::-1][:5], atol=1e-5)
    all_ids, _ = index.search(query, 500)
    assert all_ids.shape == (2, 50)
    assert QueryIndex(3).search(query, 5)[0].shape == (2, 0)


def test_texts_key_respects_boundaries() -> None:
    assert texts_key(["ab", "c"]) != texts_key(["a", "bc"])
    assert texts_key(["ab", "c"]) == texts_key(["ab", "c"])


# ---- metrics ---------------------------------------------------------------------------


def test_hull_and_aiq_on_a_hand_computed_case() -> None:
    points = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.9), (4.0, 0.8), (2.5, 0.6)]
    # (2, .6) and (2.5, .6) lie under the chord (1,.5)-(3,.9); (4, .8) falls past the peak.
    assert nondecreasing_hull(points) == [(1.0, 0.5), (3.0, 0.9)]
    # Area: 2*(0.5+0.9)/2 from 1 to 3, then flat 0.9 from 3 to 4, over a range of 3.
    assert aiq(points) == pytest.approx((1.4 + 0.9) / 3)
    assert aiq([(2.0, 0.7)]) == pytest.approx(0.7)
    # A wider common range extends the hull flat at both ends.
    assert aiq([(1.0, 0.5), (3.0, 0.9)], (0.0, 4.0)) == pytest.approx((0.5 + 1.4 + 0.9) / 4)


def test_apgr_and_cpt_on_a_toy_curve() -> None:
    strong = [1, 1, 0, 1]
    weak = [0, 1, 1, 0]
    margin = [0.9, 0.1, -0.5, 0.8]  # order: q0 (+1), q3 (+1), q1 (0), q2 (-1)
    fractions, recovered = strong_weak_curve(margin, strong, weak)
    assert list(fractions) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # Quality 0.5, 0.75, 1, 1, 0.75 against a gap of 0.25 above the weak 0.5.
    assert list(recovered) == pytest.approx([0.0, 1.0, 2.0, 2.0, 1.0])
    assert apgr(fractions, recovered) == pytest.approx(0.25 * (0.5 + 1.5 + 2.0 + 1.5))
    assert cpt(fractions, recovered, 0.5) == pytest.approx(0.125)
    # All tied: random order, the straight line from weak to strong.
    tied_f, tied_r = strong_weak_curve([0, 0, 0, 0], strong, weak)
    assert list(tied_f) == [0.0, 1.0]
    assert apgr(tied_f, tied_r) == pytest.approx(0.5)
    assert cpt(tied_f, tied_r) == pytest.approx(0.5)
    assert math.isnan(cpt(tied_f, tied_r, 2.0))


def test_route_trades_score_for_cost_and_breaks_ties_to_the_cheaper() -> None:
    scores = np.array([[0.6, 0.5, 0.5]])
    cost = np.array([1.0, 0.5, 0.2])
    assert route(scores, cost, 0.0)[0] == 0
    assert route(scores, cost, 1.0)[0] == 2
    assert route(np.array([[0.5, 0.5, 0.5]]), cost, 0.0)[0] == 2


def test_entropy_of_picks() -> None:
    assert entropy_bits(np.array([0, 0, 0]), 3) == 0.0
    assert entropy_bits(np.array([0, 1, 2, 3]), 4) == pytest.approx(2.0)


# ---- end to end on a slice of dcrouter --------------------------------------------------


@pytest.mark.slow
def test_offline_eval_on_a_slice_of_dcrouter(tmp_path: Path) -> None:
    lines: list[str] = []
    embedder = OnnxQueryEmbedder.load(prepared_model_store())
    report = run_offline_eval(
        require(DCROUTER),
        embedder,
        output=lines.append,
        train_limit=300,
        test_limit=100,
        cache_dir=tmp_path,
    )
    oracle = report.result("oracle")
    routers = [r for r in report.results if r.name != "oracle"]
    for r in report.results:
        assert 0.0 <= r.aiq <= 1.0
        assert 0.0 <= r.accuracy <= 1.0
    assert all(oracle.accuracy >= r.accuracy for r in routers)
    assert all(oracle.aiq >= r.aiq - 1e-9 for r in routers)
    assert report.result("eagle").aiq > report.result("random").aiq
    assert [s.fraction for s in report.online] == [0.70, 0.85, 1.00]
    assert sum(s.added for s in report.online) == 300
    assert any("eagle" in line for line in lines)
    assert report.result(SERVED_NAME).aiq > report.result("random").aiq
    # The served estimate's reliability on test, in the shape the dashboard reads.
    served = report.calibration_of(SERVED_NAME, SERVED_LAMBDA).reliability
    assert served["count"] == 100
    assert sum(b["count"] for b in served["bins"]) == 100
    shown = OfflineCalibrationPublic.model_validate_json(json.dumps(calibration_record(report)))
    assert shown.source == CALIBRATION_SOURCE and shown.count == 100
    assert any(line.startswith("reliability on test") for line in lines)
    # The embeddings were cached under the given directory for the next run.
    assert any(tmp_path.glob("minilm-int8-*.npy"))


@pytest.mark.slow
def test_the_router_eval_command_runs_on_a_data_directory(tmp_path: Path) -> None:
    from tests.server import run_tailor

    source = require(DCROUTER)
    for name, count in (("train.json", 60), ("test.json", 20)):
        records = json.loads((source / name).read_text())[:count]
        (tmp_path / name).write_text(json.dumps(records))
    (tmp_path / "llm_candidates.json").write_text((source / "llm_candidates.json").read_text())
    result = run_tailor(["router", "eval", "--data", str(tmp_path)], {}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "AIQ" in result.stdout and "oracle" in result.stdout
    missing = run_tailor(["router", "eval", "--data", str(tmp_path / "nope")], {})
    assert missing.returncode == 2 and "train.json" in missing.stderr

"""The router's calibrated estimate: the posterior on one scale for labels and preferences,
bounded per-user influence, and snapshots that restore exactly or are ignored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from router import FeedbackEvent
from router.posterior import LogisticPosterior, probability_std, sigmoid
from router.snapshot import load_snapshot, save_snapshot
from router.user_influence import Surprise, UserInfluence
from tests.test_router_eagle import LARGE, SMALL, crowd, feedback, make_router, rate, route

FEATURES = np.array([0.0, 1.0])  # no context, an intercept: a model's overall quality


def posterior() -> LogisticPosterior:
    return LogisticPosterior(["a", "b"], 2, weight_variance=0.25, intercept_variance=0.25)


def quality(model: LogisticPosterior) -> dict[str, float]:
    mean, _ = model.logits(FEATURES)
    return dict(zip(model.models, sigmoid(mean[0]).tolist(), strict=True))


def test_labels_learn_a_calibrated_probability() -> None:
    model, rng = posterior(), np.random.default_rng(0)
    for _ in range(600):
        model.observe_label(FEATURES, "a", float(rng.random() < 0.7))
    assert quality(model)["a"] == pytest.approx(0.7, abs=0.05)
    assert quality(model)["b"] == 0.5  # nothing seen: the prior


def test_preferences_learn_the_gap_not_extremes() -> None:
    # The figures: true accuracies 0.857 and 0.638; preferences only where the
    # two answers differ. Read as 1 and 0 rewards they gave 0.83 / 0.17.
    model, rng = posterior(), np.random.default_rng(1)
    for _ in range(3000):
        a, b = rng.random() < 0.857, rng.random() < 0.638
        if a != b:
            model.observe_preference(FEATURES, "a" if a else "b", "b" if a else "a")
    learnt = quality(model)
    gap = np.log(learnt["a"] / (1 - learnt["a"])) - np.log(learnt["b"] / (1 - learnt["b"]))
    true_gap = np.log(0.857 / 0.143) - np.log(0.638 / 0.362)
    assert gap == pytest.approx(true_gap, abs=0.25)
    assert learnt["a"] < 0.8 and learnt["b"] > 0.2


def test_one_observation_moves_little_and_uncertainty_shrinks_with_evidence() -> None:
    model = posterior()
    model.observe_preference(FEATURES, "a", "b")
    assert 0.5 < quality(model)["a"] < 0.6
    _, before = model.logits(FEATURES)
    for _ in range(50):
        model.observe_label(FEATURES, "a", 1.0)
    _, after = model.logits(FEATURES)
    assert after[0, 0] < before[0, 0] / 3
    assert probability_std([0.0], [10.0])[0] < 0.5  # a probability's spread, not the linearised


def test_bad_observations_are_refused_and_change_nothing() -> None:
    model = posterior()
    state = model.state()
    calls: list[Callable[[], None]] = [
        lambda: model.observe_label(FEATURES, "a", 1.5),
        lambda: model.observe_label(FEATURES, "a", float("nan")),
        lambda: model.observe_label(FEATURES, "zzz", 1.0),
        lambda: model.observe_label(FEATURES, "a", 1.0, weight=0.0),
        lambda: model.observe_label(np.array([np.inf, 1.0]), "a", 1.0),
        lambda: model.observe_preference(FEATURES, "a", "a"),
        lambda: model.observe_label(np.ones(3), "a", 1.0),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    for key, value in model.state().items():
        assert np.array_equal(value, state[key])


def test_a_lone_user_counts_as_full_votes_however_much_they_vote() -> None:
    influence = UserInfluence(full_votes=2, max_share=0.05)
    weights = [influence.next_weight("u") for _ in range(1000)]
    assert weights[:2] == [1.0, 1.0] and sum(weights[2:]) == 0.0
    assert influence.shared_weight("u") == pytest.approx(2.0)
    assert influence.votes("u") == 1000
    assert influence.next_weight(None) == 1.0  # a data set's labels, not a user's


def test_in_a_crowd_everyone_counts_and_a_burst_counts_as_full_votes() -> None:
    influence = UserInfluence(full_votes=2, max_share=0.05)
    # 100 users voting in turn: between two votes of one user the others add 99, which
    # earns 0.05 x 99 of credit: every vote counts fully.
    crowd = [influence.next_weight(f"user-{i % 100}") for i in range(3000)]
    assert crowd == [1.0] * 3000
    # A newcomer's burst of 1,000 votes counts as 2, however much the crowd voted before.
    burst = [influence.next_weight("loud") for _ in range(1000)]
    assert burst[:2] == [1.0, 1.0] and sum(burst[2:]) == 0.0
    # So does a member of the crowd who saved up: credit never exceeds full_votes.
    for i in range(1000):
        influence.next_weight(f"user-{i % 99}")  # user-99 sits out
    saved = [influence.next_weight("user-99") for _ in range(50)]
    assert saved[:2] == [1.0, 1.0] and sum(saved[2:]) == 0.0
    # As others vote again, the newcomer earns a share of their weight back.
    for i in range(20):
        influence.next_weight(f"user-{i}")
    assert influence.next_weight("loud") == pytest.approx(0.05 * 20)


def test_a_user_who_keeps_contradicting_the_consensus_fades_out() -> None:
    influence = UserInfluence(full_votes=100, max_share=0.5, trusted_z=2.0)  # credit for all
    # The shared estimate says 0.9 and these votes say 0: a few count, then none.
    contrary = [influence.next_weight("contrary", Surprise(p=0.9, y=0.0)) for _ in range(30)]
    assert contrary[0] == 1.0 and sum(contrary) < 5 and contrary[-1] < 1e-3
    # A user voting as the estimate expects (nine 1s, one 0 at p = 0.9) keeps full weight.
    agreeing = [
        influence.next_weight("agreeing", Surprise(p=0.9, y=float(k % 10 != 0))) for k in range(30)
    ]
    assert agreeing == [1.0] * 30
    # Trust comes back once the contrary user's votes agree again.
    later = [influence.next_weight("contrary", Surprise(p=0.9, y=1.0)) for _ in range(60)]
    assert later[0] < 1e-3 and later[-1] == 1.0 and influence.trust("contrary") == 1.0
    # Where the estimate knows nothing (p = 0.5), no vote is surprising.
    assert Surprise(p=0.5, y=0.0).excess == 0.0


def test_influence_rejects_bad_settings_and_restores_exactly() -> None:
    for bad in (
        {"full_votes": 0},
        {"full_votes": 1, "max_share": 1.0},
        {"full_votes": 1, "trusted_z": -1.0},
        {"full_votes": 1, "memory": 0.0},
    ):
        with pytest.raises(ValueError):
            UserInfluence(**bad)
    influence = UserInfluence(full_votes=1, max_share=0.1)
    for i in range(300):
        influence.next_weight(f"u{i % 7}", Surprise(p=0.3 + 0.001 * i, y=float(i % 3 == 0)))
    copy = UserInfluence(full_votes=1, max_share=0.1)
    copy.load_state(influence.state())
    for i in range(50):
        s = Surprise(p=0.8, y=float(i % 2))
        assert copy.next_weight(f"u{i % 9}", s) == influence.next_weight(f"u{i % 9}", s)


def test_a_snapshot_restores_the_same_decisions(tmp_path: Path) -> None:
    live = make_router(explore_rate=0.5)
    crowd(live, "math: sums", winner=LARGE, loser=SMALL)
    feedback(live, "code: x", winner=LARGE, loser=SMALL, user="al", times=5)
    rate(live, "poem 1", LARGE, 1, "zz")
    path = tmp_path / "state.npz"
    assert save_snapshot(live, path, reset_epoch=None) == live.last_feedback_id
    restored = make_router(explore_rate=0.5)
    assert load_snapshot(restored, path, reset_epoch=None)
    assert restored.state()["users"] == live.state()["users"]
    assert restored.state()["global"] == live.state()["global"]
    for user in ("al", "new", "crowd-1"):
        for text in ("math: a", "code: y", "poem 2"):
            a, b = route(live, text, user), route(restored, text, user)
            assert (a.model, a.reason, a.scores) == (b.model, b.reason, b.scores)
    # Both learn on identically from the next feedback.
    for router in (live, restored):
        router.apply_feedback(
            FeedbackEvent(
                feedback_id=10**6,
                user_id="al",
                model=SMALL,
                rating=1,
                vector=router.embedder.embed("code: z"),
            )
        )
    assert route(live, "code: y", "al").scores == route(restored, "code: y", "al").scores


def test_a_stale_or_corrupt_snapshot_is_ignored(tmp_path: Path) -> None:
    live = make_router()
    crowd(live, "math: sums", winner=LARGE, loser=SMALL)
    path = tmp_path / "state.npz"
    save_snapshot(live, path, reset_epoch="2026-01-01T00:00:00")
    # Another reset since, or another configuration: a full replay instead.
    assert not load_snapshot(make_router(), path, reset_epoch="2026-02-01T00:00:00")
    assert not load_snapshot(make_router(cost_weight=0.5), path, reset_epoch="2026-01-01T00:00:00")
    assert not load_snapshot(make_router(), tmp_path / "missing.npz", reset_epoch=None)
    path.write_bytes(path.read_bytes()[:200])  # truncated
    assert not load_snapshot(make_router(), path, reset_epoch="2026-01-01T00:00:00")
    path.write_bytes(b"\x80\x04not an npz at all")
    assert not load_snapshot(make_router(), path, reset_epoch="2026-01-01T00:00:00")

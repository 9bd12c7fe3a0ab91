"""The paired bootstrap of the fine-tune gate: a real gain is significant, noise is
not, the gain is token-weighted and the interval is reproducible."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from finetune.bootstrap import GainInterval, fewest_conversations_to_judge, paired_gain_interval


def _conversations(n: int, seed: int) -> tuple[list[float], list[int]]:
    """Baseline NLL sums and token counts of n conversations whose difficulty
    (nats per token) varies widely, from 0.5 to 4."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 400, size=n)
    per_token = rng.uniform(0.5, 4.0, size=n)
    return [float(x) for x in tokens * per_token], [int(t) for t in tokens]


def test_clearly_better_candidate_is_significant() -> None:
    baseline, tokens = _conversations(60, seed=1)
    rng = np.random.default_rng(2)
    # 0.05 nats per token better everywhere, with a little per-conversation noise:
    # small beside the spread of difficulty, which pairing cancels.
    candidate = [
        b - 0.05 * t + float(rng.normal(0.0, 0.5)) for b, t in zip(baseline, tokens, strict=True)
    ]
    interval = paired_gain_interval(baseline, candidate, tokens)
    assert isinstance(interval, GainInterval)
    assert interval.gain == pytest.approx(0.05, abs=0.01)
    assert 0.0 < interval.lower <= interval.gain <= interval.upper
    assert interval.significant
    assert interval.resamples == 2000
    assert interval.confidence == 0.95


def test_identical_models_gain_nothing() -> None:
    baseline, tokens = _conversations(30, seed=3)
    interval = paired_gain_interval(baseline, list(baseline), tokens)
    assert interval.gain == 0.0
    assert interval.lower <= 0.0 <= interval.upper
    assert not interval.significant


def test_noise_is_not_significant() -> None:
    baseline, tokens = _conversations(80, seed=4)
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 20.0, size=len(baseline))
    # Zero-mean noise, then shifted so that the candidate is better on this
    # sample, by far less than the noise: a gain the data cannot support.
    noise = noise - noise.mean() + 1.0
    candidate = [b - float(d) for b, d in zip(baseline, noise, strict=True)]
    interval = paired_gain_interval(baseline, candidate, tokens)
    assert interval.gain > 0.0
    assert interval.lower < 0.0 < interval.upper
    assert not interval.significant


def test_interval_is_deterministic_given_seed() -> None:
    baseline, tokens = _conversations(40, seed=6)
    rng = np.random.default_rng(7)
    candidate = [b + float(rng.normal(0.0, 10.0)) for b in baseline]
    first = paired_gain_interval(baseline, candidate, tokens, seed=11)
    again = paired_gain_interval(baseline, candidate, tokens, seed=11)
    other = paired_gain_interval(baseline, candidate, tokens, seed=12)
    assert first == again
    assert other.gain == first.gain
    assert (other.lower, other.upper) != (first.lower, first.upper)


def test_gain_is_token_weighted() -> None:
    # A short conversation (2 tokens) where the candidate gains 1 nat per token,
    # and a long one (98 tokens) where it gains nothing. Token-weighted:
    # (4 - 2 + 196 - 196) / (2 + 98) = 0.02; an unweighted mean of the
    # per-conversation gains would say (1 + 0) / 2 = 0.5.
    interval = paired_gain_interval([4.0, 196.0], [2.0, 196.0], [2, 98])
    assert interval.gain == pytest.approx(0.02)
    # Every resample is some mix of the two: the gain lies between 0 (only the
    # long one) and 1 (only the short one), and with one of each it is 0.02.
    assert 0.0 <= interval.lower <= 0.02 <= interval.upper <= 1.0


def test_long_conversation_outweighs_short_ones() -> None:
    # The candidate is worse by 0.5 nats per token on nine short conversations
    # (10 tokens each) but better by 0.1 on one long one (1000 tokens):
    # (9 * -5 + 100) / (90 + 1000) = 55 / 1090.
    baseline = [20.0] * 9 + [2000.0]
    candidate = [25.0] * 9 + [1900.0]
    tokens = [10] * 9 + [1000]
    interval = paired_gain_interval(baseline, candidate, tokens)
    assert interval.gain == pytest.approx(55.0 / 1090.0)


def test_one_conversation_collapses_to_the_point_and_decides_nothing() -> None:
    interval = paired_gain_interval([30.0], [27.0], [10], resamples=50)
    assert interval.gain == pytest.approx(0.3)
    assert interval.lower == interval.gain == interval.upper
    # The bootstrap alone would call this significant; one conversation cannot be.
    assert interval.lower > 0 and interval.p_value == 0.5
    assert not interval.significant and not interval.enough_data
    assert interval.resamples == 50


@pytest.mark.parametrize(("confidence", "fewest"), [(0.95, 5), (0.9, 4), (0.99, 7), (0.5, 1)])
def test_too_few_conversations_can_never_be_significant(confidence: float, fewest: int) -> None:
    assert fewest_conversations_to_judge(confidence) == fewest
    for n in (fewest - 1, fewest):
        if n == 0:
            continue
        # Every conversation better by the same margin: the strongest evidence n can give.
        interval = paired_gain_interval([30.0] * n, [27.0] * n, [10] * n, confidence=confidence)
        # The bootstrap's lower bound is above zero either way; the flips decide.
        assert interval.lower > 0 and interval.p_value == pytest.approx(0.5**n)
        assert interval.enough_data is (n >= fewest)
        assert interval.significant is (n >= fewest)


def test_many_conversations_use_drawn_flips_reproducibly() -> None:
    baseline, tokens = _conversations(40, seed=3)
    candidate = [b - 0.1 * t for b, t in zip(baseline, tokens, strict=True)]
    first = paired_gain_interval(baseline, candidate, tokens, seed=5)
    again = paired_gain_interval(baseline, candidate, tokens, seed=5)
    # All 40 better: only the observed signs (and any draw equal to them) reach the gain.
    assert first.p_value == again.p_value and first.p_value < 0.01
    assert first.significant and first.conversations == 40


def test_confidence_sets_the_percentiles() -> None:
    baseline, tokens = _conversations(50, seed=8)
    rng = np.random.default_rng(9)
    candidate = [b + float(rng.normal(0.0, 10.0)) for b in baseline]
    wide = paired_gain_interval(baseline, candidate, tokens, confidence=0.99)
    narrow = paired_gain_interval(baseline, candidate, tokens, confidence=0.5)
    assert wide.lower < narrow.lower < narrow.upper < wide.upper
    assert wide.confidence == 0.99


@pytest.mark.parametrize(
    ("baseline", "candidate", "tokens", "match"),
    [
        ([1.0, 2.0], [1.0], [5, 5], "length"),
        ([1.0], [1.0], [5, 5], "length"),
        ([], [], [], "no conversations"),
        ([1.0], [1.0], [0], "tokens > 0"),
        ([1.0], [1.0], [-3], "tokens > 0"),
        ([1.0], [1.0], [2.5], "whole numbers"),
        ([math.nan], [1.0], [5], "non-finite"),
        ([1.0], [math.inf], [5], "non-finite"),
        ([1.0], [1.0], [math.inf], "non-finite"),
        ([1.0], ["x"], [5], "sequence of numbers"),
    ],
)
def test_bad_values_are_refused(
    baseline: Sequence[float], candidate: Sequence[float], tokens: Sequence[int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        paired_gain_interval(baseline, candidate, tokens)


@pytest.mark.parametrize("resamples", [0, -1])
def test_bad_resamples_are_refused(resamples: int) -> None:
    with pytest.raises(ValueError, match="resamples"):
        paired_gain_interval([1.0], [1.0], [5], resamples=resamples)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_bad_confidence_is_refused(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        paired_gain_interval([1.0], [1.0], [5], confidence=confidence)

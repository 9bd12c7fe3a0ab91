"""A paired bootstrap interval for the NLL gain of a candidate model over a baseline.

The evaluation gate scores the same held-out conversations under two models (the
base model with the user's current expert, or none, and the base model with the
newly trained expert) and asks whether the candidate is really better, not just
better on this sample. Why paired: held-out conversations differ in difficulty
far more than the two models differ from each other; a short greeting costs a
fraction of a nat per token, a dense technical answer several. Resampling each
model's scores independently would let that spread swamp the difference.
Resampling conversations and keeping both models' scores of a conversation
together (the same indices for both) cancels it: each resample asks how much
better the candidate is on the same conversations.

The gain is token-weighted, as the loss is: the mean NLL per token over all the
scored tokens, baseline minus candidate, so a long conversation counts more
than a short one. It is positive when the candidate is better.

A bootstrap over a handful of conversations is overconfident: with four, every
resample is drawn from the same four differences, and a lower bound above zero
only says that all four improved. So a gain also needs a paired sign-flip
(randomisation) test: if the candidate were no better, each conversation's
difference would be as likely negative as positive, and the test asks how often
flipping signs at random gives a gain at least as large as the one observed.
That p-value can never be below 2^-n with n conversations, which is what makes
"not enough data to judge" a fact rather than a guess: at 95% it takes 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Up to this many conversations the sign-flip test enumerates every flip (2^n);
# past it, it draws ``resamples`` of them.
EXACT_FLIPS_UP_TO = 14
# How sure the gate must be that a candidate is better (GateRules.confidence's default).
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class GainInterval:
    """The gain in nats per token (positive: candidate better) and its interval.

    `lower` and `upper` are the (1 - confidence) / 2 and (1 + confidence) / 2
    percentiles of the bootstrap distribution of the gain; `p_value` is the
    one-sided paired sign-flip test's (NaN when nothing could be computed).
    """

    gain: float
    lower: float
    upper: float
    resamples: int
    confidence: float
    p_value: float = float("nan")
    conversations: int = 0

    @property
    def significant(self) -> bool:
        """The candidate is better: the interval lies above zero and the sign-flip
        test rejects "no better" at the confidence level."""
        return self.lower > 0.0 and self.p_value <= 1.0 - self.confidence

    @property
    def enough_data(self) -> bool:
        """Whether these many conversations could show a gain at all (2^-n is the
        smallest p-value the sign-flip test can give)."""
        return self.conversations > 0 and 0.5**self.conversations <= 1.0 - self.confidence


def fewest_conversations_to_judge(confidence: float) -> int:
    """The fewest held-out conversations on which a gain can be significant."""
    n = 1
    while 0.5**n > 1.0 - confidence:
        n += 1
    return n


def _as_finite_array(name: str, values: Sequence[float] | Sequence[int]) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a sequence of numbers: {error}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds a non-finite value (NaN or infinity)")
    return array


def paired_gain_interval(
    baseline_nll: Sequence[float],
    candidate_nll: Sequence[float],
    tokens: Sequence[int],
    *,
    resamples: int = 2000,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> GainInterval:
    """The token-weighted NLL gain of the candidate over the baseline, with a
    paired bootstrap interval.

    Index i is one held-out conversation: `baseline_nll[i]` and `candidate_nll[i]`
    are the sums of its token NLLs (nats) under each model, `tokens[i]` the number
    of tokens scored. The gain is (sum(baseline) - sum(candidate)) / sum(tokens).
    Each of `resamples` resamples draws len(tokens) conversations with replacement,
    the same ones for both models, and computes that gain on them; the interval is
    the central `confidence` share of those gains. The draws come from
    numpy.random.default_rng(seed), so the interval is the same for the same seed.

    With a single conversation every resample is that conversation, so the
    interval collapses to the point gain (and is significant exactly when the
    candidate is better on it): one conversation says nothing about spread, and
    callers should require enough held-out conversations before trusting it.

    Raises ValueError when the sequences are empty or differ in length, a token
    count is not a positive whole number, a value is not finite, `resamples` < 1
    or `confidence` is not strictly between 0 and 1.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a whole number >= 1, got {resamples!r}")
    if not 0.0 < confidence < 1.0:  # also refuses NaN
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if not len(baseline_nll) == len(candidate_nll) == len(tokens):
        raise ValueError(
            "baseline_nll, candidate_nll and tokens must have one value per conversation; "
            f"got lengths {len(baseline_nll)}, {len(candidate_nll)} and {len(tokens)}"
        )
    if len(tokens) == 0:
        raise ValueError("no conversations: baseline_nll, candidate_nll and tokens are empty")

    baseline = _as_finite_array("baseline_nll", baseline_nll)
    candidate = _as_finite_array("candidate_nll", candidate_nll)
    counts = _as_finite_array("tokens", tokens)
    if np.any(counts <= 0):
        raise ValueError("every conversation must have at least one scored token (tokens > 0)")
    if np.any(counts != np.floor(counts)):
        raise ValueError("tokens must be whole numbers")

    difference = baseline - candidate  # per conversation, nats; positive: candidate better
    gain = float(difference.sum() / counts.sum())

    rng = np.random.default_rng(seed)
    n = len(counts)
    indices = rng.integers(0, n, size=(resamples, n))  # paired: one draw for both models
    gains = difference[indices].sum(axis=1) / counts[indices].sum(axis=1)
    lower, upper = np.quantile(gains, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return GainInterval(
        gain=gain,
        lower=float(lower),
        upper=float(upper),
        resamples=resamples,
        confidence=confidence,
        # The token total is the same under every flip, so sums compare as gains do.
        p_value=_sign_flip_p_value(difference, resamples=resamples, rng=rng),
        conversations=n,
    )


def _sign_flip_p_value(
    difference: npt.NDArray[np.float64],
    *,
    resamples: int,
    rng: np.random.Generator,
) -> float:
    """One-sided: the share of sign flips whose gain is at least the observed one.

    The observed signs are one of the flips, so the p-value is never 0.
    """
    n = len(difference)
    observed = difference.sum()
    if n <= EXACT_FLIPS_UP_TO:
        every = np.arange(2**n)[:, None] >> np.arange(n)[None, :] & 1
        signs = 1.0 - 2.0 * every  # all 2^n sign patterns, the observed one among them
    else:
        signs = np.vstack([np.ones(n), rng.choice([-1.0, 1.0], size=(resamples, n))])
    flipped = signs @ difference
    # A tolerance: the observed sum recomputed through a matrix product may differ
    # in its last bits, and must count as "at least as large".
    at_least = flipped >= observed - 1e-9 * max(1.0, float(np.abs(difference).sum()))
    return float(at_least.mean())

"""Reliability of predicted probabilities: binned calibration, Brier score, ECE.

One function for every caller, so that the live figures (``GET
/admin/router/calibration``, from served decisions and real feedback) and the
offline benchmark's (dcrouter test) are computed the same way and can be drawn
on one reliability diagram.

Invariants: ``bins`` equal-width bins over [0, 1], the last one closed (a
prediction of exactly 1 falls in it); every bin is reported, an empty one with
``count`` 0 and null means; observed outcomes are in [0, 1], so a neutral
rating may count as 0.5. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np


class ReliabilityBin(TypedDict):
    lower: float
    upper: float
    count: int
    # Null for an empty bin: there is nothing to average.
    mean_predicted: float | None
    observed_rate: float | None


class Reliability(TypedDict):
    bins: list[ReliabilityBin]
    count: int
    # Mean squared gap between prediction and outcome; null without data.
    brier: float | None
    # Expected calibration error: the count-weighted mean of each bin's
    # |mean predicted - observed rate|; null without data.
    ece: float | None


def reliability_bins(
    predicted: Sequence[float] | np.ndarray,
    observed: Sequence[float] | np.ndarray,
    bins: int = 10,
) -> Reliability:
    """Bin ``predicted`` probabilities and compare each bin with its ``observed`` outcomes.

    Raises ``ValueError`` for inputs of different lengths or shapes, values
    outside [0, 1] or not finite, or fewer than one bin.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, not {bins!r}")
    p = np.asarray(predicted, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    if p.ndim != 1 or o.ndim != 1:
        raise ValueError("predicted and observed must be flat sequences")
    if p.shape != o.shape:
        raise ValueError(f"predicted and observed differ in length ({p.shape[0]} and {o.shape[0]})")
    for name, values in (("predicted", p), ("observed", o)):
        # NaN fails both comparisons, so it is caught here too.
        if not np.all((values >= 0.0) & (values <= 1.0)):
            raise ValueError(f"{name} values must be finite numbers in [0, 1]")

    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    predicted_sums = np.bincount(index, weights=p, minlength=bins)
    observed_sums = np.bincount(index, weights=o, minlength=bins)

    table: list[ReliabilityBin] = []
    gap_sum = 0.0
    for b in range(bins):
        n = int(counts[b])
        mean_predicted = float(predicted_sums[b] / n) if n else None
        observed_rate = float(observed_sums[b] / n) if n else None
        if mean_predicted is not None and observed_rate is not None:
            gap_sum += n * abs(mean_predicted - observed_rate)
        table.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "mean_predicted": mean_predicted,
                "observed_rate": observed_rate,
            }
        )
    total = int(p.shape[0])
    if total == 0:
        return {"bins": table, "count": 0, "brier": None, "ece": None}
    return {
        "bins": table,
        "count": total,
        "brier": float(np.mean((p - o) ** 2)),
        "ece": gap_sum / total,
    }

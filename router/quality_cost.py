"""Quality-cost metrics of a router (pure functions, no I/O).

- AIQ: area under the non-decreasing convex hull of the (cost, quality)
  points, divided by the cost range.
- APGR and CPT: RouteLLM's two-model view, the performance gap between a
  strong and a weak model recovered as more calls go to the strong one.
- Entropy of picks: how spread the router's choices are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def nondecreasing_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper convex hull of (cost, quality) points, cut at its highest quality: what
    a router can reach by mixing its settings at random, never paying more for less."""
    best: dict[float, float] = {}
    for c, q in points:
        best[c] = max(q, best.get(c, -math.inf))
    hull: list[tuple[float, float]] = []
    for c, q in sorted(best.items()):
        # Pop the last vertex while it lies on or under the chord to the new point.
        while len(hull) >= 2:
            (c1, q1), (c2, q2) = hull[-2], hull[-1]
            if (c2 - c1) * (q - q1) - (q2 - q1) * (c - c1) >= 0:
                hull.pop()
            else:
                break
        hull.append((c, q))
    peak = max(range(len(hull)), key=lambda i: hull[i][1])
    return hull[: peak + 1]


def aiq(
    points: Sequence[tuple[float, float]], cost_range: tuple[float, float] | None = None
) -> float:
    """Area under the non-decreasing convex hull divided by the cost range (the
    points' own range unless given). The hull is flat beyond its ends; one point
    (or a zero range) gives its quality."""
    hull = nondecreasing_hull(points)
    lo, hi = (
        cost_range
        if cost_range is not None
        else (min(p[0] for p in points), max(p[0] for p in points))
    )
    if hi <= lo:
        return max(q for _, q in hull)
    xs = np.array([c for c, _ in hull])
    ys = np.array([q for _, q in hull])
    grid = np.unique(np.concatenate([[lo, hi], xs[(xs > lo) & (xs < hi)]]))
    values = np.interp(grid, xs, ys)
    return float(np.trapezoid(values, grid) / (hi - lo))


def strong_weak_curve(
    margin: npt.ArrayLike, strong: npt.ArrayLike, weak: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """RouteLLM's two-model curve: queries go to the strong model in order of the
    router's preference for it; returns (fraction of strong calls, performance gap
    recovered). Tied preferences are split at random, so between tie groups the
    curve is the straight line that random order gives in expectation."""
    m = np.asarray(margin, dtype=np.float64)
    s = np.asarray(strong, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    n = len(m)
    q_strong, q_weak = s.mean(), w.mean()
    if n == 0 or q_strong == q_weak:
        raise ValueError("the strong and weak models have the same quality: no gap to recover")
    order = np.argsort(-m, kind="stable")
    gains = np.concatenate([[0.0], np.cumsum((s - w)[order])])
    sorted_margin = m[order]
    ends = [0, *(i + 1 for i in range(n - 1) if sorted_margin[i] != sorted_margin[i + 1]), n]
    k = np.array(ends)
    quality = (w.sum() + gains[k]) / n
    return k / n, (quality - q_weak) / (q_strong - q_weak)


def apgr(fractions: FloatArray, recovered: FloatArray) -> float:
    """Average performance gap recovered over the strong-call fraction in [0, 1]."""
    return float(np.trapezoid(recovered, fractions))


def cpt(fractions: FloatArray, recovered: FloatArray, target: float = 0.5) -> float:
    """Smallest fraction of strong calls that recovers ``target`` of the gap."""
    if recovered[0] >= target:
        return float(fractions[0])
    for i in range(1, len(fractions)):
        if recovered[i] >= target:
            f0, f1, r0, r1 = fractions[i - 1], fractions[i], recovered[i - 1], recovered[i]
            return float(f0 + (f1 - f0) * (target - r0) / (r1 - r0))
    return math.nan


def entropy_bits(picks: IntArray, n_models: int) -> float:
    counts = np.bincount(picks, minlength=n_models).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())

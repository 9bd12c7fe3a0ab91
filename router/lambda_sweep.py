"""How a router's scores become figures: the lambda sweep and the metrics read off it.

A router under test is only its score matrix (queries x models). At each lambda it
routes every query to argmax(score - lambda * normalised cost), and the picks give a
quality-cost curve, AIQ, accuracy, cost, APGR / CPT(50%) against a strong-weak pair,
regret against the oracle, the entropy of the picks, and the reliability of the picked
model's predicted P(good). The offline evaluation (router/offline_eval.py), the choice
of settings on validation (router/validation_tuning.py) and the online replay
(router/online_replay.py) all score through here, so their figures are comparable.

Invariants: pure functions of the arrays given (no randomness, no I/O); ties in utility
go to the cheaper model; the truth is read only at the picked (query, model) cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router.calibration import Reliability, reliability_bins
from router.quality_cost import (
    FloatArray,
    IntArray,
    aiq,
    apgr,
    cpt,
    entropy_bits,
    strong_weak_curve,
)
from router.routing_data import RoutingData

# From "never mind cost" to "cheapest model for everyone" on a [0, 1] score scale.
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, *(float(x) for x in np.geomspace(1e-3, 1e2, 51)))
CALIBRATION_BINS = 10


def route(scores: FloatArray, cost: FloatArray, lam: float) -> IntArray:
    """argmax of score - lam * cost/max(cost); ties go to the cheaper model."""
    norm = cost / cost.max()
    utility = scores - lam * norm - 1e-9 * norm
    picks: IntArray = np.argmax(utility, axis=1).astype(np.int64)
    return picks


@dataclass(frozen=True)
class RouterResult:
    name: str
    aiq: float
    accuracy: float  # at lambda = 0, the highest-quality setting
    cost: float  # dollars per query at lambda = 0
    apgr: float
    cpt50: float
    regret: float  # oracle accuracy minus this accuracy, both at lambda = 0
    entropy_bits: float  # of the models picked at lambda = 0
    curve: tuple[tuple[float, float, float], ...]  # (lambda, cost, quality)


def evaluate_router(
    name: str,
    scores: FloatArray,
    truth: FloatArray,
    cost: FloatArray,
    lambdas: Sequence[float],
    *,
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> RouterResult:
    rows = np.arange(len(truth))
    curve = []
    for lam in lambdas:
        picks = route(scores, cost, lam)
        curve.append((float(lam), float(cost[picks].mean()), float(truth[rows, picks].mean())))
    picks0 = route(scores, cost, 0.0)
    accuracy = float(truth[rows, picks0].mean())
    strong, weak = pair
    apgr_value = cpt50 = math.nan
    # On a small slice the pair can tie: then there is no gap and neither figure exists.
    if truth[:, strong].mean() != truth[:, weak].mean():
        fractions, recovered = strong_weak_curve(
            scores[:, strong] - scores[:, weak], truth[:, strong], truth[:, weak]
        )
        apgr_value, cpt50 = apgr(fractions, recovered), cpt(fractions, recovered)
    return RouterResult(
        name=name,
        aiq=aiq([(c, q) for _, c, q in curve], (float(cost.min()), float(cost.max()))),
        accuracy=accuracy,
        cost=float(cost[picks0].mean()),
        apgr=apgr_value,
        cpt50=cpt50,
        regret=oracle_accuracy - accuracy,
        entropy_bits=entropy_bits(picks0, len(cost)),
        curve=tuple(curve),
    )


def single_model_result(
    name: str, column: int, truth: FloatArray, cost: FloatArray, oracle_accuracy: float
) -> RouterResult:
    accuracy = float(truth[:, column].mean())
    point = (0.0, float(cost[column]), accuracy)
    return RouterResult(
        name=name,
        aiq=accuracy,  # one point: the curve is flat at its quality
        accuracy=accuracy,
        cost=float(cost[column]),
        apgr=math.nan,
        cpt50=math.nan,
        regret=oracle_accuracy - accuracy,
        entropy_bits=0.0,
        curve=(point,),
    )


def strong_weak_pair(data: RoutingData) -> tuple[int, int]:
    """Strong: best on train. Weak: the cheapest, best on train among equals."""
    train_accuracy = data.train_scores.mean(axis=0)
    strong = int(np.argmax(train_accuracy))
    cheapest = np.flatnonzero(data.cost == data.cost.min())
    weak = int(cheapest[np.argmax(train_accuracy[cheapest])])
    return strong, weak


@dataclass(frozen=True)
class CalibrationFigures:
    """How a router's P(good) of the model it picks at ``lam`` compares on test with that
    model's recorded score (partial credits count as they are)."""

    name: str
    lam: float
    reliability: Reliability


def picked_calibration(
    name: str, predicted: FloatArray, truth: FloatArray, cost: FloatArray, lam: float
) -> CalibrationFigures:
    picks = route(predicted, cost, lam)
    rows = np.arange(len(truth))
    figures = reliability_bins(predicted[rows, picks], truth[rows, picks], bins=CALIBRATION_BINS)
    return CalibrationFigures(name, lam, figures)

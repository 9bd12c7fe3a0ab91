"""Per-model ridge regression on query embeddings, learned online by recursive least
squares (RLS).

For each model m the fit minimises

    sum_i w_i (y_i - theta_m . x_i)^2 + (theta_m - theta0)^T Lambda (theta_m - theta0)

over the queries i where m was observed, with x = [vector, 1]. Lambda is ``penalty``
on the vector's weights and a tiny ``intercept_penalty`` on the intercept, whose prior
mean is ``prior_mean``: the fit shrinks towards the model's own mean quality rather
than towards zero, and a model seen by nothing predicts ``prior_mean``.

RLS keeps the inverse P = (X^T W X + Lambda)^-1 and updates it by Sherman-Morrison
(``sherman_morrison_update``: the router's one rank-one inverse update, which the output
length predictor uses too), so one observation costs O(d^2) and the state always equals
the closed-form ridge fit of what was observed so far (up to rounding). Replaying the
same observations in the same order repeats the same floating-point operations, so it
rebuilds the same numbers.

Models whose observation histories are identical have the same P, so they share one:
a query observed for every model (offline data, or a side-by-side comparison) costs
one O(d^2) update instead of one per model. An observation of some models of a group
splits it in two; in a live service fed one rating at a time the groups soon become
one per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Small enough that the intercept is in effect unpenalised, large enough that P starts
# finite (RLS needs a proper prior) and well conditioned next to penalty ~ 1-100.
DEFAULT_INTERCEPT_PENALTY = 1e-4
# Knowing nothing about a model, a coin flip.
DEFAULT_PRIOR_MEAN = 0.5


def sherman_morrison_update(
    inverse: FloatArray, x: FloatArray, *, weight: float = 1.0
) -> tuple[FloatArray, float]:
    """Add the weighted observation ``x`` to the inverse ``P``, in place, in O(d^2).

    ``P <- (P^-1 + w x x^T)^-1 = P - (P x)(P x)^T / (1/w + x^T P x)`` (Sherman-Morrison).
    Returns ``(P x, 1/w + x^T P x)`` as they were before the update: the RLS gain is
    their quotient. The correction ``(P x)(P x)^T`` is exactly symmetric as computed
    (a*b == b*a), so a symmetric ``P`` stays so; the same inputs in the same order give
    the same bits.
    """
    px = inverse @ x
    denominator = 1.0 / weight + float(x @ px)
    correction = np.outer(px, px)
    correction /= denominator
    inverse -= correction
    return px, denominator


class OnlineRidge:
    """One ridge regression per model, updated one observation at a time."""

    def __init__(
        self,
        models: Sequence[str],
        dimensions: int,
        *,
        penalty: float,
        intercept_penalty: float = DEFAULT_INTERCEPT_PENALTY,
        prior_mean: float = DEFAULT_PRIOR_MEAN,
    ) -> None:
        if not models:
            raise ValueError("at least one model is needed")
        if len(set(models)) != len(models):
            raise ValueError("model names must be distinct")
        if dimensions < 1:
            raise ValueError("dimensions must be at least 1")
        if not (penalty > 0 and intercept_penalty > 0):
            raise ValueError("penalty and intercept_penalty must be positive")
        if not math.isfinite(prior_mean):
            raise ValueError("prior_mean must be finite")
        self.models = list(models)
        self.dimensions = dimensions
        self.penalty = penalty
        self.intercept_penalty = intercept_penalty
        self.prior_mean = prior_mean
        self._column = {m: i for i, m in enumerate(self.models)}
        size = dimensions + 1
        precision = np.full(size, float(penalty))
        precision[-1] = intercept_penalty
        # Row m: theta_m, the weights then the intercept.
        self.coefficients: FloatArray = np.zeros((len(self.models), size))
        self.coefficients[:, -1] = prior_mean
        # Group g: the model columns in _members[g] share the inverse _inverses[g].
        self._members: list[list[int]] = [list(range(len(self.models)))]
        self._inverses: list[FloatArray] = [np.diag(1.0 / precision)]
        self.observations = np.zeros(len(self.models), dtype=np.int64)

    # ---- features ----------------------------------------------------------------------

    def features(self, vectors: npt.ArrayLike) -> FloatArray:
        """Rows [vector, 1]; raises on a wrong width or a non-finite value."""
        matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if matrix.ndim != 2 or matrix.shape[1] != self.dimensions:
            raise ValueError(
                f"expected vectors of {self.dimensions} dimensions, got shape {matrix.shape}"
            )
        if not np.isfinite(matrix).all():
            raise ValueError("query vectors must be finite")
        ones = np.ones((matrix.shape[0], 1))
        result: FloatArray = np.hstack([matrix, ones])
        return result

    # ---- learning ----------------------------------------------------------------------

    def observe(
        self, vector: npt.ArrayLike, rewards: Mapping[str, float], *, weight: float = 1.0
    ) -> None:
        """One query's observed rewards, for any subset of the models; O(d^2) per group
        of models touched (one group when every model is observed together)."""
        (x,) = self.features(vector)
        if not rewards:
            raise ValueError("rewards must name at least one model")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError("weight must be positive and finite")
        targets: dict[int, float] = {}
        for model, reward in rewards.items():
            if model not in self._column:
                raise ValueError(f"unknown model {model!r}; known: {self.models}")
            if not math.isfinite(reward):
                raise ValueError(f"reward for {model!r} must be finite, got {reward!r}")
            targets[self._column[model]] = float(reward)
        # A snapshot of the groups: the ones split off below are already updated.
        for group in range(len(self._members)):
            members = self._members[group]
            touched = [c for c in members if c in targets]
            if not touched:
                continue
            target = group
            if len(touched) < len(members):
                self._members[group] = [c for c in members if c not in targets]
                self._members.append(touched)
                self._inverses.append(self._inverses[group].copy())
                target = len(self._members) - 1
            self._update(target, x, np.array([targets[c] for c in touched]), weight)

    def _update(self, group: int, x: FloatArray, targets: FloatArray, weight: float) -> None:
        columns = self._members[group]
        px, denominator = sherman_morrison_update(self._inverses[group], x, weight=weight)
        # Weighted RLS: gain = P x / (1/w + x^T P x); each model moves by its own error.
        errors = targets - self.coefficients[columns] @ x
        self.coefficients[columns] += np.outer(errors, px / denominator)
        self.observations[columns] += 1

    # ---- prediction --------------------------------------------------------------------

    def predict_many(self, vectors: npt.ArrayLike) -> FloatArray:
        """(queries, models) predicted rewards, columns in ``self.models`` order."""
        predictions: FloatArray = self.features(vectors) @ self.coefficients.T
        return predictions

    def predict(self, vector: npt.ArrayLike) -> dict[str, float]:
        (row,) = self.predict_many(vector)
        return {m: float(v) for m, v in zip(self.models, row, strict=True)}

    def inverse(self, model: str) -> FloatArray:
        """A copy of the model's (X^T W X + Lambda)^-1 (for inspection and tests)."""
        column = self._column[model]
        group = next(g for g, members in enumerate(self._members) if column in members)
        return self._inverses[group].copy()

    @property
    def groups(self) -> list[list[str]]:
        """Models sharing one inverse, in the order the groups were formed."""
        return [[self.models[c] for c in members] for members in self._members if members]

"""A Gaussian posterior over each model's logistic quality weights, learnt online.

For model m and features phi(x) of a query, P(answer good | x, m) = sigmoid(w_m . phi(x)),
with w_m ~ N(mean_m, cov_m). The prior is N(0, diag(weight_variance, ..., intercept_variance)):
every model starts at P = 0.5 with its uncertainty, and a few observations cannot move it
far, since each update is weighed against the covariance it has so far.

Two kinds of evidence, one scale:

- a label y in [0, 1] on one model (a rating read as 1 / 0.5 / 0, an uploaded correctness
  score): a Bernoulli observation of sigmoid(w_m . phi);
- a preference of model a's answer over model b's on the same query: a Bradley-Terry
  observation of sigmoid(w_a . phi - w_b . phi). Preferences are only given where two answers
  differ, and on 0/1 correctness P(a preferred | they differ) = p_a (1 - p_b) / (p_a (1 - p_b)
  + p_b (1 - p_a)), whose logit is exactly logit p_a - logit p_b: a preference says how far
  apart the two models are, never how good either is, so it cannot push both to 0 and 1.

Each observation is one step of the online Laplace approximation (an extended Kalman update):
O(d^2) per model touched, no refit, deterministic (the same observations in the same order
give the same numbers). For a preference the two models' posteriors stay independent
(assumed-density filtering, as TrueSkill does): the cross-covariance the update would create
is dropped.

``offset`` arguments add a fixed logit to the model's (a per-user residual, say), so the same
class learns a residual on top of a shared estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# h = p (1 - p) is floored so that a confident wrong prediction still updates a little.
_MIN_CURVATURE = 1e-4


def sigmoid(z: npt.ArrayLike) -> FloatArray:
    values: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=np.float64), -30, 30)))
    return values


# Gauss-Hermite nodes and weights for E[f(z)], z ~ N(0, 1) (probabilists' form).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(9)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def probability_std(mean: npt.ArrayLike, variance: npt.ArrayLike) -> FloatArray:
    """Standard deviation of sigmoid(z) for z ~ N(mean, variance), elementwise: the
    uncertainty of P(good) itself, which the linearised p (1 - p) sd overstates for a
    vague posterior (it can exceed 0.5)."""
    mu = np.asarray(mean, dtype=np.float64)[..., None]
    sd = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64), 0.0))[..., None]
    p = sigmoid(mu + sd * _NODES)
    first = (p * _WEIGHTS).sum(axis=-1)
    second = (p * p * _WEIGHTS).sum(axis=-1)
    spread: FloatArray = np.sqrt(np.maximum(second - first * first, 0.0))
    return spread


class LogisticPosterior:
    """One Gaussian posterior per model over ``dimensions`` weights (the last is the intercept)."""

    def __init__(
        self,
        models: Sequence[str],
        dimensions: int,
        *,
        weight_variance: float,
        intercept_variance: float,
    ) -> None:
        if not models or len(set(models)) != len(models):
            raise ValueError("models must be a non-empty list of distinct names")
        if dimensions < 1:
            raise ValueError("dimensions must be at least 1 (the intercept)")
        for name, value in (
            ("weight_variance", weight_variance),
            ("intercept_variance", intercept_variance),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite")
        self.models = list(models)
        self.dimensions = dimensions
        self.weight_variance = weight_variance
        self.intercept_variance = intercept_variance
        self._column = {m: i for i, m in enumerate(self.models)}
        prior = np.full(dimensions, weight_variance)
        prior[-1] = intercept_variance
        self.means: FloatArray = np.zeros((len(self.models), dimensions))
        self.covariances: FloatArray = np.repeat(np.diag(prior)[None], len(self.models), axis=0)
        # Per model: the summed weight of what it learnt (shown to admins; not used to decide).
        self.evidence: FloatArray = np.zeros(len(self.models))
        # A float32 copy of the covariances for predictions: a decision reads all of them
        # (~10 MB in float64 for 9 models), and half the bytes is ~0.3 ms of a ~1.5 ms
        # decision. Learning stays in float64; a model's copy is refreshed after it learns.
        self._read_copy: npt.NDArray[np.float32] | None = None
        self._stale: set[int] = set()

    def column(self, model: str) -> int:
        try:
            return self._column[model]
        except KeyError:
            raise ValueError(f"unknown model {model!r}; known: {self.models}") from None

    # ---- prediction --------------------------------------------------------------------

    def logits(self, features: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(queries, models) posterior mean and variance of each model's logit."""
        phi = self._features(features)
        mean: FloatArray = phi @ self.means.T
        # v[q, m] = phi_q^T cov_m phi_q, as batched matrix products (BLAS; einsum is ~3x slower)
        phi32 = phi.astype(np.float32)
        projected = self._covariances_to_read() @ phi32.T  # (models, d, queries)
        variance: FloatArray = (projected * phi32.T[None]).sum(axis=1).T.astype(np.float64)
        return mean, np.maximum(variance, 0.0)

    def _covariances_to_read(self) -> npt.NDArray[np.float32]:
        if self._read_copy is None:
            self._read_copy = self.covariances.astype(np.float32)
        else:
            for m in self._stale:
                self._read_copy[m] = self.covariances[m]
        self._stale.clear()
        return self._read_copy

    def mean_logits(self, features: npt.ArrayLike) -> FloatArray:
        """(queries, models) posterior mean logit only: O(d) per model, for many rows."""
        values: FloatArray = self._features(features) @ self.means.T
        return values

    # ---- learning ----------------------------------------------------------------------

    def observe_label(
        self,
        features: npt.ArrayLike,
        model: str,
        label: float,
        *,
        weight: float = 1.0,
        offset: float = 0.0,
    ) -> None:
        """``model``'s answer here was good with probability ``label`` (in [0, 1])."""
        if not 0.0 <= label <= 1.0:  # also refuses NaN
            raise ValueError(f"a label must lie in [0, 1], got {label!r}")
        _check_weight(weight)
        phi = self._features(features)[0]
        m = self.column(model)
        cov_phi = self.covariances[m] @ phi
        variance = float(phi @ cov_phi)
        p = float(sigmoid(self.means[m] @ phi + offset))
        gradient = weight * (label - p)
        curvature = weight * max(p * (1.0 - p), _MIN_CURVATURE)
        self._step(m, cov_phi, gradient, curvature, variance)
        self.evidence[m] += weight

    def observe_preference(
        self,
        features: npt.ArrayLike,
        winner: str,
        loser: str,
        *,
        weight: float = 1.0,
        offsets: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """``winner``'s answer here was preferred to ``loser``'s."""
        if winner == loser:
            raise ValueError(f"a preference needs two different models, got {winner!r} twice")
        _check_weight(weight)
        phi = self._features(features)[0]
        a, b = self.column(winner), self.column(loser)
        cov_a, cov_b = self.covariances[a] @ phi, self.covariances[b] @ phi
        variance = float(phi @ cov_a) + float(phi @ cov_b)
        gap = (self.means[a] - self.means[b]) @ phi + offsets[0] - offsets[1]
        p = float(sigmoid(gap))
        gradient = weight * (1.0 - p)
        curvature = weight * max(p * (1.0 - p), _MIN_CURVATURE)
        self._step(a, cov_a, gradient, curvature, variance)
        self._step(b, cov_b, -gradient, curvature, variance)
        self.evidence[a] += weight
        self.evidence[b] += weight

    def _step(
        self, m: int, cov_phi: FloatArray, gradient: float, curvature: float, variance: float
    ) -> None:
        # Sherman-Morrison on the precision plus h phi phi^T: the new covariance times phi
        # is cov_phi / (1 + h v), and the mean moves by that times the gradient.
        scale = 1.0 / (1.0 + curvature * variance)
        self.means[m] += cov_phi * (gradient * scale)
        self.covariances[m] -= (curvature * scale) * np.outer(cov_phi, cov_phi)
        self._stale.add(m)

    def _features(self, features: npt.ArrayLike) -> FloatArray:
        phi = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if phi.shape[1] != self.dimensions:
            raise ValueError(f"expected {self.dimensions} features, got {phi.shape[1]}")
        if not np.isfinite(phi).all():
            raise ValueError("features must be finite")
        return phi

    # ---- state -------------------------------------------------------------------------

    def state(self) -> dict[str, FloatArray]:
        return {
            "means": self.means.copy(),
            "covariances": self.covariances.copy(),
            "evidence": self.evidence.copy(),
        }

    def load_state(self, state: dict[str, npt.NDArray[np.float64]]) -> None:
        shape = (len(self.models), self.dimensions)
        if state["means"].shape != shape or state["covariances"].shape != (
            *shape,
            self.dimensions,
        ):
            raise ValueError("the saved posterior does not fit these models and dimensions")
        self.means = np.array(state["means"], dtype=np.float64)
        self.covariances = np.array(state["covariances"], dtype=np.float64)
        self.evidence = np.array(state["evidence"], dtype=np.float64)
        self._read_copy = None


def with_intercept(vectors: npt.ArrayLike) -> FloatArray:
    """Features [x, 1] of each row of ``vectors``."""
    rows = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    features: FloatArray = np.hstack([rows, np.ones((rows.shape[0], 1))])
    return features


def _check_weight(weight: float) -> None:
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError("weight must be positive and finite")

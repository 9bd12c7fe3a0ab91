"""UELLM's resource profiler, made online: each model's output length, predicted
from the query embedding and the prompt length, learned from observed lengths.

One ridge regression per model on log(1 + completion tokens), kept as the
inverse of its normal matrix and updated by Sherman-Morrison (the router's one
rank-one update, ``router.online_ridge.sherman_morrison_update``): O(d^2) per
observation, no refit, the same numbers whenever the same observations are
replayed in the same order. The target is centred on a prior length so that a
model with no observations predicts the prior, and each observation pulls it
towards what the model really does.

An answer cut by max_tokens is observed at that length (a lower bound): the
predictor learns "at least this long", which is what sizing needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from router.online_ridge import sherman_morrison_update

DEFAULT_PRIOR_TOKENS = 100.0
DEFAULT_RIDGE = 1.0


def _features(vector: npt.ArrayLike, prompt_tokens: int) -> npt.NDArray[np.float64]:
    # The bias and the log prompt length let the model learn its own typical
    # length and "long prompts get long answers" before topic matters.
    embedding = np.asarray(vector, dtype=np.float64).ravel()
    return np.concatenate([embedding, [1.0, math.log1p(max(prompt_tokens, 0)) / 8.0]])


@dataclass
class _ModelFit:
    inverse: npt.NDArray[np.float64]  # (X^T X + ridge I)^-1
    weighted_targets: npt.NDArray[np.float64]  # X^T y
    observations: int = 0
    weights: npt.NDArray[np.float64] = field(init=False)

    def __post_init__(self) -> None:
        self.weights = self.inverse @ self.weighted_targets


class OutputLengthPredictor:
    def __init__(
        self,
        dimensions: int,
        *,
        prior_tokens: float = DEFAULT_PRIOR_TOKENS,
        ridge: float = DEFAULT_RIDGE,
    ) -> None:
        if dimensions < 1:
            raise ValueError("dimensions must be at least 1")
        if prior_tokens < 1 or ridge <= 0:
            raise ValueError("prior_tokens must be at least 1 and ridge positive")
        self.dimensions = dimensions
        self.prior_log = math.log1p(prior_tokens)
        self.ridge = ridge
        self._fits: dict[str, _ModelFit] = {}

    def _fit(self, model: str) -> _ModelFit:
        fit = self._fits.get(model)
        if fit is None:
            size = self.dimensions + 2
            fit = _ModelFit(np.eye(size) / self.ridge, np.zeros(size))
            self._fits[model] = fit
        return fit

    def _check(self, vector: npt.ArrayLike) -> None:
        if np.asarray(vector).size != self.dimensions:
            raise ValueError(f"expected a {self.dimensions}-dimensional query vector")

    def observe(
        self, model: str, vector: npt.ArrayLike, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self._check(vector)
        if completion_tokens < 0:
            raise ValueError("completion_tokens must not be negative")
        x = _features(vector, prompt_tokens)
        y = math.log1p(completion_tokens) - self.prior_log
        fit = self._fit(model)
        # (A + x x^T)^-1 = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x), in place.
        sherman_morrison_update(fit.inverse, x)
        fit.weighted_targets += y * x
        fit.weights = fit.inverse @ fit.weighted_targets
        fit.observations += 1

    def predict(
        self, model: str, vector: npt.ArrayLike, *, prompt_tokens: int, max_tokens: int
    ) -> int:
        """Expected completion tokens, between 1 and ``max_tokens``."""
        self._check(vector)
        fit = self._fits.get(model)
        log_tokens = self.prior_log
        if fit is not None:
            log_tokens += float(_features(vector, prompt_tokens) @ fit.weights)
        return int(min(max(round(math.expm1(log_tokens)), 1), max_tokens))

    def observations(self, model: str) -> int:
        fit = self._fits.get(model)
        return 0 if fit is None else fit.observations

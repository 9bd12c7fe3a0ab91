"""Per-model answer quality in [0, 1] predicted from the query embedding, learned online.

Two parts, both updated at once by each observation and never refitted:

1. ``OnlineRidge``: one ridge regression per model on the normalised embedding (RLS,
   O(d^2) per observation). It captures what a model is good at across the whole
   embedding space and extrapolates to queries unlike any seen.
2. A memory of past observations searched by cosine: the ridge's residuals at the
   ``neighbours`` nearest past queries, weighted by exp((cos - 1) / bandwidth), correct
   the ridge prediction:

       quality_m(x) = ridge_m(x) + sum_i w_i (y_im - ridge_m(x_i)) / (prior_weight + sum_i w_i)

   summed over the neighbours i where m was observed. The ridge counts as
   ``prior_weight`` pseudo-observations; a repeated query (cosine 1) adds a full one,
   so what a model really did on this very query, or a near copy, outweighs the
   linear trend, which is what makes the memory worth keeping. Residuals use the
   current ridge, so the correction never double counts what the ridge learned.

Feedback may be partial: rewards for any subset of the models, or a preference
between two (``observe_pairwise``). Everything is deterministic: replaying the same
observations in the same order rebuilds the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from router.embeddings import QueryIndex, normalise_rows
from router.online_ridge import FloatArray, OnlineRidge

# Queries scored together in predict_many: bounds the (queries, neighbours, d) block.
_CHUNK = 128


@dataclass(frozen=True)
class NeighbourCorrection:
    """How the memory of past queries corrects the ridge prediction."""

    neighbours: int = 50
    bandwidth: float = 0.2  # in cosine units: weight exp((cos - 1) / bandwidth)
    prior_weight: float = 3.0  # pseudo-observations the ridge prediction counts for

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ValueError("neighbours must be at least 1")
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise ValueError("bandwidth must be positive and finite")
        if not (self.prior_weight > 0 and math.isfinite(self.prior_weight)):
            raise ValueError("prior_weight must be positive and finite")

    def label(self) -> str:
        return f"N={self.neighbours} bw={self.bandwidth:g} m={self.prior_weight:g}"


@dataclass(frozen=True)
class QualityModelConfig:
    penalty: float = 30.0  # ridge penalty on the embedding weights
    correction: NeighbourCorrection | None = field(default_factory=NeighbourCorrection)

    def label(self) -> str:
        memory = "no memory" if self.correction is None else self.correction.label()
        return f"ridge {self.penalty:g}, {memory}"


class QualityModel:
    """``observe`` / ``observe_rewards`` / ``observe_pairwise`` learn; ``predict`` and
    ``predict_many`` give each model's expected quality in [0, 1]."""

    def __init__(
        self,
        models: Sequence[str],
        dimensions: int,
        config: QualityModelConfig | None = None,
    ) -> None:
        config = config or QualityModelConfig()
        self.ridge = OnlineRidge(models, dimensions, penalty=config.penalty)
        self.models = self.ridge.models
        self.dimensions = dimensions
        # Not fixed at construction: it only acts at prediction time, so one learned
        # state can be scored under several settings (the validation grid does).
        self.correction = config.correction
        self.index = QueryIndex(dimensions)
        self._column = {m: i for i, m in enumerate(self.models)}
        # Per stored observation: the reward of each model (NaN: not observed), its weight.
        self._rewards: FloatArray = np.full((16, len(self.models)), np.nan)
        self._row_weights: FloatArray = np.zeros(16)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def config(self) -> QualityModelConfig:
        return QualityModelConfig(penalty=self.ridge.penalty, correction=self.correction)

    # ---- learning ----------------------------------------------------------------------

    def observe(
        self, vector: npt.ArrayLike, model: str, reward: float, *, weight: float = 1.0
    ) -> None:
        """One rating: ``model`` answered this query with quality ``reward`` in [0, 1]."""
        self.observe_rewards(vector, {model: reward}, weight=weight)

    def observe_pairwise(
        self, vector: npt.ArrayLike, winner: str, loser: str, *, weight: float = 1.0
    ) -> None:
        """A preference: ``winner``'s answer was better than ``loser``'s.

        Read as reward 1 for the winner and 0 for the loser. On 0/1 correctness, the
        scale this model predicts, that is exactly what a strict preference means
        (right against wrong). A tie says nothing about either model's level, so it
        has no entry point here; callers skip ties, as Eagle's evaluation does.
        """
        if winner == loser:
            raise ValueError(f"a preference needs two different models, got {winner!r} twice")
        self.observe_rewards(vector, {winner: 1.0, loser: 0.0}, weight=weight)

    def observe_rewards(
        self, vector: npt.ArrayLike, rewards: Mapping[str, float], *, weight: float = 1.0
    ) -> None:
        """Rewards in [0, 1] of any subset of the models on one query (all of them for
        an offline data set). O(d^2) per group of models with a shared history."""
        row = self._check_vector(vector)
        if not rewards:
            raise ValueError("rewards must name at least one model")
        for model, reward in rewards.items():
            if model not in self._column:
                raise ValueError(f"unknown model {model!r}; known: {self.models}")
            if not 0.0 <= reward <= 1.0:  # also refuses NaN
                raise ValueError(f"reward for {model!r} must lie in [0, 1], got {reward!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError("weight must be positive and finite")
        # Everything is checked above, so the ridge and the memory change together or not at all.
        self.ridge.observe(row, rewards, weight=weight)
        (position,) = self.index.add(row)
        if position >= len(self._row_weights):
            grown = np.full((2 * len(self._row_weights), len(self.models)), np.nan)
            grown[:position] = self._rewards[:position]
            self._rewards = grown
            self._row_weights = np.concatenate([self._row_weights, np.zeros(position)])
        for model, reward in rewards.items():
            self._rewards[position, self._column[model]] = float(reward)
        self._row_weights[position] = weight

    def _check_vector(self, vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
        matrix = np.asarray(vector, dtype=np.float64)
        if matrix.size != self.dimensions:
            raise ValueError(
                f"expected a {self.dimensions}-dimensional query vector, got {matrix.size} values"
            )
        if not np.isfinite(matrix).all():
            raise ValueError("query vectors must be finite")
        # The ridge sees the same normalised float32 vector the index stores.
        row: npt.NDArray[np.float32] = normalise_rows(matrix.reshape(1, -1))[0]
        return row

    # ---- prediction --------------------------------------------------------------------

    def predict(self, vector: npt.ArrayLike) -> dict[str, float]:
        """Expected quality in [0, 1] of each model's answer to this query."""
        self._check_vector(vector)
        # The raw vector, so that predict and predict_many round the same way.
        (row,) = self.predict_many(np.asarray(vector, dtype=np.float64).reshape(1, -1))
        return {m: float(v) for m, v in zip(self.models, row, strict=True)}

    def predict_many(self, vectors: npt.ArrayLike) -> FloatArray:
        """(queries, models) expected quality, columns in ``self.models`` order."""
        queries = normalise_rows(vectors)
        if queries.shape[1] != self.dimensions:
            raise ValueError(f"expected {self.dimensions} dimensions, got {queries.shape[1]}")
        if not np.isfinite(queries).all():
            raise ValueError("query vectors must be finite")
        quality = self.ridge.predict_many(queries)
        if self.correction is not None and len(self.index) > 0:
            for start in range(0, len(queries), _CHUNK):
                block = slice(start, start + _CHUNK)
                quality[block] += self._residual_correction(queries[block], self.correction)
        clipped: FloatArray = np.clip(quality, 0.0, 1.0)
        return clipped

    def predict_from_neighbours(
        self, vector: npt.ArrayLike, ids: npt.ArrayLike, cosines: npt.ArrayLike
    ) -> dict[str, float]:
        """``predict`` with the nearest past queries already found, nearest first.

        For a caller whose own index holds the same rows in the same order (the live
        router's local ELO does): one search serves both. Only the first
        ``correction.neighbours`` are used.
        """
        row = self._check_vector(vector).reshape(1, -1)
        quality = self.ridge.predict_many(row)
        if self.correction is not None and len(self.index) > 0:
            k = self.correction.neighbours
            found = np.asarray(ids, dtype=np.int64).reshape(1, -1)[:, :k]
            near = np.asarray(cosines, dtype=np.float32).reshape(1, -1)[:, :k]
            if found.size and int(found.max()) >= len(self.index):
                raise ValueError("a neighbour id is beyond this model's memory")
            if found.size:
                quality += self._shift(found, near, self.correction)
        clipped: FloatArray = np.clip(quality[0], 0.0, 1.0)
        return {m: float(v) for m, v in zip(self.models, clipped, strict=True)}

    def _residual_correction(
        self, queries: npt.NDArray[np.float32], correction: NeighbourCorrection
    ) -> FloatArray:
        ids, cosines = self.index.search(queries, correction.neighbours)
        return self._shift(ids, cosines, correction)

    def _shift(
        self,
        ids: npt.NDArray[np.int64],
        cosines: npt.NDArray[np.float32],
        correction: NeighbourCorrection,
    ) -> FloatArray:
        neighbours = self.index.vectors[ids]  # (queries, k, d)
        # The current ridge at each neighbour: its residual is what the ridge misses there.
        fitted = self.ridge.features(neighbours.reshape(-1, self.dimensions))
        fitted_quality = (fitted @ self.ridge.coefficients.T).reshape(*ids.shape, -1)
        observed = self._rewards[ids]  # (queries, k, models), NaN where not observed
        seen = ~np.isnan(observed)
        residuals = np.where(seen, observed - fitted_quality, 0.0)
        kernel = np.exp((cosines.astype(np.float64) - 1.0) / correction.bandwidth)
        weights = (kernel * self._row_weights[ids])[:, :, None] * seen
        shift: FloatArray = (weights * residuals).sum(axis=1) / (
            correction.prior_weight + weights.sum(axis=1)
        )
        return shift

"""What happened on past queries like this one: the router's memory of feedback.

Every piece of feedback with a query embedding becomes one row: the embedding, what was
observed (a label per model, or a preference between two), the row's weight (a user's share
of influence, router/user_influence.py) and whose feedback it was. A query's evidence is the
residual of those rows against the shared estimate, kernel-weighted by similarity and shrunk
towards zero:

    shift_m(x) = sum_i K_i w_i r_im / (prior_weight + sum_i K_i w_i [m seen in row i])

with K_i = exp((cos_i - 1) / bandwidth). The shared estimate counts as ``prior_weight``
observations, so a few rows cannot move a score far, and a repeated query (cosine 1) adds a
full observation. Residuals use the shared estimate as it is now, so the shift never counts
twice what the shared model has already learnt.

A label row's residual is label - p. A preference row's is +-(1 - pi) / 2 for the winner and
the loser, pi being the shared estimate's probability of that preference: a surprising
preference moves both models, an expected one hardly at all, and neither is pushed to 0 or 1.

Two views of the same memory: everyone else's rows near the query (``shared_shift``, the
requesting user's own left out) and the requesting user's own rows (``user_shift``): a user's
feedback adjusts their own routing in context, and reaches other users only through rows of
bounded weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.embeddings import QueryIndex

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# The shared estimate's P(good) at some stored rows: (rows, models).
SharedPrediction = Callable[[npt.NDArray[np.float32]], FloatArray]

NO_USER = -1
NO_MODEL = -1


@dataclass(frozen=True)
class EvidenceConfig:
    """Kernel and shrinkage of the two views (validated on dcrouter: docs/benchmarks.md)."""

    neighbours: int = 50  # chosen on validation, docs/benchmarks.md
    bandwidth: float = 0.2  # cosine units; chosen on validation, docs/benchmarks.md
    prior_weight: float = 3.0  # chosen on validation, docs/benchmarks.md
    user_neighbours: int = 32
    user_bandwidth: float = 0.3  # chosen on the online replay (lone user), docs/benchmarks.md
    user_prior_weight: float = 2.0  # chosen on the online replay (lone user), docs/benchmarks.md
    # Of one user's rows near a query, only this many nearest count in everyone else's
    # evidence: a user who votes many times on queries like this one (an adversary aiming
    # at a topic) counts as a few neighbours, not as the whole neighbourhood.
    rows_per_user: int = 2

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.user_neighbours < 1:
            raise ValueError("neighbours must be at least 1")
        if self.rows_per_user < 1:
            raise ValueError("rows_per_user must be at least 1")
        for name in ("bandwidth", "prior_weight", "user_bandwidth", "user_prior_weight"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite")


@dataclass(frozen=True)
class Shift:
    """Per model: the evidence's correction to P(good), and the kernel mass behind it."""

    values: FloatArray
    mass: FloatArray


class NeighbourEvidence:
    def __init__(self, models: list[str], dimensions: int, config: EvidenceConfig) -> None:
        self.models = models
        self.config = config
        self.index = QueryIndex(dimensions)
        n = len(models)
        self._labels: FloatArray = np.full((16, n), np.nan)
        self._winner: IntArray = np.full(16, NO_MODEL, dtype=np.int64)
        self._loser: IntArray = np.full(16, NO_MODEL, dtype=np.int64)
        self._weight: FloatArray = np.zeros(16)
        self._user: IntArray = np.full(16, NO_USER, dtype=np.int64)
        self._user_numbers: dict[str, int] = {}
        self._user_rows: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def user_number(self, user_id: str | None) -> int:
        if not user_id:
            return NO_USER
        return self._user_numbers.setdefault(user_id, len(self._user_numbers))

    # ---- learning ----------------------------------------------------------------------

    def add_labels(
        self,
        vector: npt.ArrayLike,
        labels: Mapping[int, float],
        *,
        weight: float,
        user_id: str | None,
    ) -> int:
        row = self._add(vector, weight, user_id)
        for column, label in labels.items():
            self._labels[row, column] = label
        return row

    def add_preference(
        self, vector: npt.ArrayLike, winner: int, loser: int, *, weight: float, user_id: str | None
    ) -> int:
        row = self._add(vector, weight, user_id)
        self._winner[row], self._loser[row] = winner, loser
        return row

    def _add(self, vector: npt.ArrayLike, weight: float, user_id: str | None) -> int:
        (row,) = self.index.add(np.asarray(vector).reshape(1, -1))
        if row >= len(self._weight):
            grow = len(self._weight)
            self._labels = np.vstack([self._labels, np.full((grow, len(self.models)), np.nan)])
            self._winner = np.concatenate([self._winner, np.full(grow, NO_MODEL)])
            self._loser = np.concatenate([self._loser, np.full(grow, NO_MODEL)])
            self._weight = np.concatenate([self._weight, np.zeros(grow)])
            self._user = np.concatenate([self._user, np.full(grow, NO_USER)])
        user = self.user_number(user_id)
        self._weight[row] = weight
        self._user[row] = user
        if user != NO_USER:
            self._user_rows.setdefault(user, []).append(row)
        return row

    # ---- reading -----------------------------------------------------------------------

    def user_of(self, row: int) -> int:
        return int(self._user[row])

    def user_row_count(self, user_id: str) -> int:
        number = self._user_numbers.get(user_id)
        return 0 if number is None else len(self._user_rows.get(number, ()))

    def shared_shift(
        self,
        ids: npt.ArrayLike,
        cosines: npt.ArrayLike,
        predict: SharedPrediction,
        *,
        exclude_user: str | None,
    ) -> Shift:
        """Everyone else's evidence at the query whose nearest rows are ``ids``."""
        rows = np.asarray(ids, dtype=np.int64).reshape(-1)[: self.config.neighbours]
        sims = np.asarray(cosines, dtype=np.float64).reshape(-1)[: self.config.neighbours]
        excluded = self._user_numbers.get(exclude_user or "", None)
        if rows.size:
            keep = self._each_user_nearest(rows, sims)
            if excluded is not None:
                keep &= self._user[rows] != excluded
            rows, sims = rows[keep], sims[keep]
        return self._shift(rows, sims, predict, self.config.bandwidth, self.config.prior_weight)

    def _each_user_nearest(self, rows: IntArray, sims: FloatArray) -> npt.NDArray[np.bool_]:
        """Which of ``rows`` are among their user's ``rows_per_user`` most similar (rows
        without a user, a data set's labels, all count)."""
        keep = np.ones(rows.size, dtype=bool)
        taken: dict[int, int] = {}
        for i in np.argsort(-sims, kind="stable"):
            user = int(self._user[rows[i]])
            if user == NO_USER:
                continue
            taken[user] = taken.get(user, 0) + 1
            keep[i] = taken[user] <= self.config.rows_per_user
        return keep

    def user_shift(self, query: npt.ArrayLike, user_id: str, predict: SharedPrediction) -> Shift:
        """The user's own evidence near ``query`` (a normalised vector)."""
        number = self._user_numbers.get(user_id)
        own = self._user_rows.get(number, []) if number is not None else []
        if not own:
            zeros = np.zeros(len(self.models))
            return Shift(zeros, zeros.copy())
        rows = np.asarray(own, dtype=np.int64)
        sims = self.index.vectors[rows] @ np.asarray(query, dtype=np.float32).reshape(-1)
        k = min(self.config.user_neighbours, rows.size)
        if k < rows.size:
            top = np.argpartition(-sims, k - 1)[:k]
            rows, sims = rows[top], sims[top]
        return self._shift(
            rows,
            sims.astype(np.float64),
            predict,
            self.config.user_bandwidth,
            self.config.user_prior_weight,
            own=True,
        )

    def _shift(
        self,
        rows: IntArray,
        sims: FloatArray,
        predict: SharedPrediction,
        bandwidth: float,
        prior_weight: float,
        *,
        own: bool = False,
    ) -> Shift:
        n = len(self.models)
        if rows.size == 0:
            return Shift(np.zeros(n), np.zeros(n))
        p = np.clip(predict(self.index.vectors[rows]), 1e-6, 1 - 1e-6)  # (k, n)
        residuals = self._labels[rows] - p  # NaN where the row has no label for the model
        seen = ~np.isnan(residuals)
        residuals = np.where(seen, residuals, 0.0)
        preferences = np.nonzero(self._winner[rows] != NO_MODEL)[0]
        if preferences.size:
            winners = self._winner[rows[preferences]]
            losers = self._loser[rows[preferences]]
            pw, pl = p[preferences, winners], p[preferences, losers]
            logit_gap = np.log(pw / (1 - pw)) - np.log(pl / (1 - pl))
            surprise = 1.0 - 1.0 / (1.0 + np.exp(-logit_gap))
            residuals[preferences, winners] = surprise / 2
            residuals[preferences, losers] = -surprise / 2
            seen[preferences, winners] = True
            seen[preferences, losers] = True
        kernel = np.exp((sims - 1.0) / bandwidth)
        if not own:
            # A row weighs what its user's vote weighed in the shared estimate; a user's
            # own rows count in full for that user.
            kernel = kernel * self._weight[rows]
        weights = kernel[:, None] * seen
        mass = weights.sum(axis=0)
        values: FloatArray = (weights * residuals).sum(axis=0) / (prior_weight + mass)
        return Shift(values, mass)

    # ---- state -------------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[np.generic]]:
        size = len(self)
        users = sorted(self._user_numbers, key=self._user_numbers.__getitem__)
        return {
            "labels": self._labels[:size].copy(),
            "winner": self._winner[:size].copy(),
            "loser": self._loser[:size].copy(),
            "weight": self._weight[:size].copy(),
            "user": self._user[:size].copy(),
            "user_ids": np.array(users, dtype=np.str_),
            **{f"index_{k}": v for k, v in self.index.state().items()},
        }

    def load_state(self, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
        index_state = {k[len("index_") :]: v for k, v in state.items() if k.startswith("index_")}
        self.index = QueryIndex.from_state(self.index.dimensions, index_state)
        size = len(self.index)
        self._labels = np.array(state["labels"], dtype=np.float64)
        self._winner = np.array(state["winner"], dtype=np.int64)
        self._loser = np.array(state["loser"], dtype=np.int64)
        self._weight = np.array(state["weight"], dtype=np.float64)
        self._user = np.array(state["user"], dtype=np.int64)
        if not (
            self._labels.shape == (size, len(self.models))
            and len(self._winner)
            == len(self._loser)
            == len(self._weight)
            == len(self._user)
            == size
        ):
            raise ValueError("the saved evidence does not fit its index")
        self._user_numbers = {str(u): i for i, u in enumerate(state["user_ids"])}
        # Each user's rows in order, grouped without a Python loop over rows.
        rows = np.nonzero(self._user != NO_USER)[0]
        owners = self._user[rows]
        order = np.argsort(owners, kind="stable")
        users, starts = np.unique(owners[order], return_index=True)
        groups = np.split(rows[order], starts[1:]) if rows.size else []
        self._user_rows = {int(u): group.tolist() for u, group in zip(users, groups, strict=True)}
        if size == 0:  # keep room to grow by doubling
            self._labels = np.full((16, len(self.models)), np.nan)
            self._winner = np.full(16, NO_MODEL, dtype=np.int64)
            self._loser = np.full(16, NO_MODEL, dtype=np.int64)
            self._weight = np.zeros(16)
            self._user = np.full(16, NO_USER, dtype=np.int64)

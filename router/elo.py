"""Eagle's ratings (arXiv 2409.15518): a global ELO over the candidate models, a
local ELO replayed from the nearest past queries, and their blend.

Pure logic: no I/O, no clock. Written from the paper's description.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from router.embeddings import QueryIndex

DEFAULT_K = 32.0
DEFAULT_INITIAL = 1000.0
DEFAULT_NEIGHBOURS = 20
DEFAULT_GLOBAL_WEIGHT = 0.5  # the paper's P


class Outcome(NamedTuple):
    """One pairwise comparison; on a draw the order of the two models means nothing."""

    winner: str
    loser: str
    draw: bool = False


def pairwise_outcomes(scores: Mapping[str, float], *, draws: bool) -> list[Outcome]:
    """Every pair of models on one query: a higher score wins; equal scores are a draw
    when ``draws`` is set, else the pair says nothing and is skipped.

    Skipping is the default used by the evaluation: on dcrouter a tie is usually
    "both wrong" (or "both right"), which says nothing about which model is better,
    and counting it as a draw pulls every rating towards the mean. The validation
    split of train decides; offline_eval prints both.
    """
    names = sorted(scores)
    result: list[Outcome] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if scores[a] > scores[b]:
                result.append(Outcome(a, b))
            elif scores[b] > scores[a]:
                result.append(Outcome(b, a))
            elif draws:
                result.append(Outcome(a, b, draw=True))
    return result


class EloRatings:
    """ELO ratings over a fixed set of models; each update is O(1)."""

    def __init__(
        self, models: Iterable[str], *, k: float = DEFAULT_K, initial: float = DEFAULT_INITIAL
    ) -> None:
        self.k = k
        self.initial = initial
        self.ratings: dict[str, float] = dict.fromkeys(models, initial)

    def __getitem__(self, model: str) -> float:
        return self.ratings[model]

    def expected(self, a: str, b: str) -> float:
        """Probability that ``a`` beats ``b`` (a draw counting one half)."""
        gap = (self.ratings[b] - self.ratings[a]) / 400.0
        return 1.0 / (1.0 + float(10.0**gap))

    def update(self, winner: str, loser: str, *, draw: bool = False) -> None:
        actual = 0.5 if draw else 1.0
        # Zero-sum: what the winner gains the loser loses, so the mean stays `initial`.
        delta = self.k * (actual - self.expected(winner, loser))
        self.ratings[winner] += delta
        self.ratings[loser] -= delta

    def apply(self, outcomes: Iterable[Outcome]) -> None:
        _play(self.ratings, outcomes, self.k)


def _play(ratings: MutableMapping[Any, float], games: Iterable[Sequence[Any]], k: float) -> None:
    """``update`` over many (winner, loser, draw) games, inlined: a local replay runs ~1,000
    per routing decision and method calls were most of its time. The keys are model names,
    or model numbers for ``GameLog``'s flat arrays."""
    for winner, loser, draw in games:
        gap = (ratings[loser] - ratings[winner]) / 400.0
        delta = k * ((0.5 if draw else 1.0) - 1.0 / (1.0 + float(10.0**gap)))
        ratings[winner] += delta
        ratings[loser] -= delta


class LocalElo:
    """Past queries (embeddings and their outcomes); ratings for a new query are
    replayed from scratch over its N nearest past queries."""

    def __init__(
        self,
        models: Sequence[str],
        dimensions: int,
        *,
        neighbours: int = DEFAULT_NEIGHBOURS,
        k: float = DEFAULT_K,
        initial: float = DEFAULT_INITIAL,
    ) -> None:
        self.models = list(models)
        self.neighbours = neighbours
        self.k = k
        self.initial = initial
        self.index = QueryIndex(dimensions)
        self._outcomes: list[list[Outcome]] = []

    def __len__(self) -> int:
        return len(self._outcomes)

    def add(self, vector: npt.ArrayLike, outcomes: Sequence[Outcome]) -> int:
        (query_id,) = self.index.add(vector)
        self._outcomes.append(list(outcomes))
        return query_id

    def ratings(self, vector: npt.ArrayLike) -> tuple[dict[str, float], list[int]]:
        ids, _ = self.index.search(vector, self.neighbours)
        nearest = [int(i) for i in ids[0]]
        return self.replay(nearest), nearest

    def replay(self, query_ids: Sequence[int]) -> dict[str, float]:
        """Fresh ratings from the outcomes of ``query_ids`` (given nearest first).

        They are replayed farthest first: ELO weighs recent games most, so the
        most similar queries get the last, largest say.
        """
        return replay_games(self.models, self._outcomes, query_ids, k=self.k, initial=self.initial)


def replay_games(
    models: Sequence[str],
    games: Sequence[Sequence[Outcome]],
    query_ids: Sequence[int],
    *,
    k: float,
    initial: float,
) -> dict[str, float]:
    """Fresh ratings from ``games[i]`` for each i in ``query_ids`` (given nearest first),
    replayed farthest first: ELO weighs recent games most, so the most similar queries get
    the last, largest say."""
    elo = EloRatings(models, k=k, initial=initial)
    for query_id in reversed(query_ids):
        elo.apply(games[query_id])
    return elo.ratings


class EagleRatings:
    """Global ELO plus local ELO, blended as P*global + (1-P)*local."""

    def __init__(
        self,
        models: Sequence[str],
        dimensions: int,
        *,
        global_weight: float = DEFAULT_GLOBAL_WEIGHT,
        neighbours: int = DEFAULT_NEIGHBOURS,
        k: float = DEFAULT_K,
        initial: float = DEFAULT_INITIAL,
    ) -> None:
        if not 0.0 <= global_weight <= 1.0:
            raise ValueError("global_weight (P) must lie in [0, 1]")
        self.models = list(models)
        self.global_weight = global_weight
        self.global_elo = EloRatings(models, k=k, initial=initial)
        self.local = LocalElo(models, dimensions, neighbours=neighbours, k=k, initial=initial)

    def observe(self, vector: npt.ArrayLike, outcomes: Sequence[Outcome]) -> None:
        """One query's feedback: O(pairs) on the global ratings, an append to the index."""
        self.global_elo.apply(outcomes)
        self.local.add(vector, outcomes)

    def scores(self, vector: npt.ArrayLike) -> tuple[dict[str, float], list[int]]:
        """Blended rating per model, and the past queries that formed the local part."""
        local, nearest = self.local.ratings(vector)
        p = self.global_weight
        blended = {m: p * self.global_elo[m] + (1.0 - p) * local[m] for m in self.models}
        return blended, nearest


def win_probability_vs_field(ratings: Mapping[str, float]) -> dict[str, float]:
    """Each model's mean expected score against the others: a [0, 1] quality estimate
    that can be traded against a normalised cost, unlike raw rating points."""
    names = list(ratings)
    if len(names) < 2:
        return dict.fromkeys(names, 0.5)
    result: dict[str, float] = {}
    for a in names:
        total = sum(
            1.0 / (1.0 + 10.0 ** ((ratings[b] - ratings[a]) / 400.0)) for b in names if b != a
        )
        result[a] = total / (len(names) - 1)
    return result


class GameLog:
    """Each stored query's games as flat integer arrays (model numbers), not Python objects:
    a million queries load from a snapshot in milliseconds and cost ~30 bytes each."""

    def __init__(self, models: Sequence[str]) -> None:
        self.models = list(models)
        self._number = {m: i for i, m in enumerate(self.models)}
        self._offsets: list[int] = [0]
        # (winner, loser, draw) per game, grown by doubling.
        self._games = np.zeros((64, 3), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, outcomes: Sequence[Outcome]) -> None:
        start = self._offsets[-1]
        end = start + len(outcomes)
        if end > len(self._games):
            grown = np.zeros((max(end, 2 * len(self._games)), 3), dtype=np.int64)
            grown[:start] = self._games[:start]
            self._games = grown
        for i, (winner, loser, draw) in enumerate(outcomes):
            self._games[start + i] = (self._number[winner], self._number[loser], int(draw))
        self._offsets.append(end)

    def outcomes(self, query: int) -> list[Outcome]:
        rows = self._games[self._offsets[query] : self._offsets[query + 1]]
        return [Outcome(self.models[w], self.models[lo], bool(d)) for w, lo, d in rows.tolist()]

    def replay(self, query_ids: Sequence[int], *, k: float, initial: float) -> dict[str, float]:
        """Fresh ratings from the games of ``query_ids`` (given nearest first), replayed
        farthest first, as ``replay_games`` does; on model numbers, with no Outcome built."""
        ratings = dict.fromkeys(range(len(self.models)), initial)
        offsets, games = self._offsets, self._games
        for query_id in reversed(query_ids):
            _play(ratings, games[offsets[query_id] : offsets[query_id + 1]].tolist(), k)
        return {model: ratings[i] for i, model in enumerate(self.models)}

    def state(self) -> dict[str, npt.NDArray[np.int64]]:
        return {
            "offsets": np.array(self._offsets, dtype=np.int64),
            "games": self._games[: self._offsets[-1]].copy(),
        }

    @classmethod
    def from_state(
        cls, models: Sequence[str], state: Mapping[str, npt.NDArray[np.int64]]
    ) -> GameLog:
        log = cls(models)
        offsets, games = np.asarray(state["offsets"]), np.asarray(state["games"])
        if (
            offsets.ndim != 1
            or len(offsets) < 1
            or offsets[0] != 0
            or games.shape != (int(offsets[-1]), 3)
            or np.any(np.diff(offsets) < 0)
            or (games.size and (games[:, :2].min() < 0 or games[:, :2].max() >= len(log.models)))
        ):
            raise ValueError("the saved games are inconsistent")
        log._offsets = offsets.tolist()
        log._games = np.array(games, dtype=np.int64) if games.size else log._games
        return log

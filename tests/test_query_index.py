"""QueryIndex: exact up to its limit, approximate (faiss IVF) past it, deterministic,
and restorable from plain arrays. Small limits keep these fast."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from router.embeddings import QueryIndex, normalise_rows

DIMS = 32
LIMIT = 2_000


def clustered(rows: int, seed: int, clusters: int = 60) -> npt.NDArray[np.float32]:
    """Rows around random centres, like embeddings of questions on a few topics."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(clusters, DIMS))
    picked = centres[rng.integers(0, clusters, rows)]
    return (picked + rng.normal(scale=0.35, size=(rows, DIMS))).astype(np.float32)


def brute_force(
    rows: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> list[set[int]]:
    sims = normalise_rows(queries) @ normalise_rows(rows).T
    return [set(np.argsort(-s, kind="stable")[:k].tolist()) for s in sims]


def filled(rows: npt.NDArray[np.float32], limit: int = LIMIT) -> QueryIndex:
    index = QueryIndex(DIMS, exact_limit=limit)
    index.add(rows)
    return index


def test_exact_up_to_the_limit_and_approximate_past_it() -> None:
    rows = clustered(LIMIT, seed=1)
    queries = clustered(30, seed=2)
    index = filled(rows)
    assert not index.approximate
    ids, cosines = index.search(queries, 10)
    assert [set(r.tolist()) for r in ids] == brute_force(rows, queries, 10)
    assert np.all(np.diff(cosines, axis=1) <= 0)  # nearest first
    index.add(rows[:1])
    assert index.approximate and len(index) == LIMIT + 1


def test_recall_against_exact_search_past_the_limit() -> None:
    rows = clustered(12 * LIMIT, seed=3)
    queries = clustered(200, seed=4)
    index = filled(rows)
    assert index.approximate
    ids, cosines = index.search(queries, 50)
    exact = brute_force(rows, queries, 50)
    recall = np.mean(
        [len(set(found.tolist()) & want) / 50 for found, want in zip(ids, exact, strict=True)]
    )
    assert recall >= 0.9
    # The cosines are the found rows' exact inner products, nearest first.
    expected = np.einsum("qkd,qd->qk", index.vectors[ids], normalise_rows(queries))
    np.testing.assert_allclose(cosines, expected, atol=1e-5)
    assert np.all(np.diff(cosines, axis=1) <= 0)


def test_same_rows_in_any_batches_give_the_same_answers() -> None:
    rows = clustered(3 * LIMIT, seed=5)
    queries = clustered(50, seed=6)
    bulk = filled(rows)
    one_by_one = QueryIndex(DIMS, exact_limit=LIMIT)
    for row in rows[: LIMIT + 10]:
        one_by_one.add(row)
    one_by_one.add(rows[LIMIT + 10 :])
    # The same centroids and lists, not merely answers that happen to agree.
    for key, value in bulk.state().items():
        np.testing.assert_array_equal(value, one_by_one.state()[key])
    for a, b in zip(bulk.search(queries, 20), one_by_one.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_round_trip_answers_identically_and_keeps_learning() -> None:
    rows = clustered(3 * LIMIT, seed=7)
    queries = clustered(50, seed=8)
    index = filled(rows)
    state = index.state()
    assert set(state) == {"rows", "centroids", "lists"}
    assert all(type(v) is np.ndarray for v in state.values())
    restored = QueryIndex.from_state(DIMS, state, exact_limit=LIMIT)
    assert restored.approximate and len(restored) == len(index)
    for a, b in zip(index.search(queries, 20), restored.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any(v.flags.writeable for v in state.values())  # views of the index's own
    saved = {key: value.copy() for key, value in state.items()}
    more = clustered(500, seed=9)
    index.add(more)
    restored.add(more)
    for key, value in saved.items():  # still what it was when taken
        np.testing.assert_array_equal(state[key], value)
    for a, b in zip(index.search(queries, 20), restored.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_below_the_limit_is_just_the_rows() -> None:
    rows = clustered(100, seed=10)
    index = filled(rows)
    state = index.state()
    assert set(state) == {"rows"}
    restored = QueryIndex.from_state(DIMS, state, exact_limit=LIMIT)
    np.testing.assert_array_equal(restored.vectors, index.vectors)
    assert not restored.approximate
    # Restoring under a lower limit trains, as adding the rows would.
    assert QueryIndex.from_state(DIMS, state, exact_limit=50).approximate


def test_asking_for_every_row_returns_every_row() -> None:
    # The probed lists hold fewer rows than asked for: those queries go exact.
    rows = clustered(LIMIT + 500, seed=11)
    index = filled(rows)
    ids, cosines = index.search(clustered(3, seed=12), len(rows) + 10)
    assert ids.shape == (3, len(rows))
    for found in ids:
        assert sorted(found.tolist()) == list(range(len(rows)))
    assert np.all(np.diff(cosines, axis=1) <= 0)


def test_empty_index_and_zero_neighbours() -> None:
    index = QueryIndex(DIMS, exact_limit=LIMIT)
    ids, cosines = index.search(np.ones(DIMS), 5)
    assert ids.shape == cosines.shape == (1, 0)
    index.add(clustered(3, seed=13))
    assert index.search(np.ones(DIMS), 0)[0].shape == (1, 0)
    # An empty batch adds nothing, past the limit too.
    past = filled(clustered(LIMIT + 1, seed=15))
    assert past.add(np.zeros((0, DIMS))) == range(LIMIT + 1, LIMIT + 1)
    assert len(past) == LIMIT + 1 and len(past.state()["lists"]) == LIMIT + 1


def test_wrong_shapes_are_refused() -> None:
    index = filled(clustered(LIMIT + 1, seed=14))
    with pytest.raises(ValueError, match="expected 32 dimensions"):
        index.add(np.ones(DIMS + 1))
    with pytest.raises(ValueError, match="expected 32 dimensions"):
        index.search(np.ones((2, DIMS - 1)), 3)
    with pytest.raises(ValueError, match="exact_limit"):
        QueryIndex(DIMS, exact_limit=-1)
    state = index.state()
    with pytest.raises(ValueError, match="rows must be"):
        QueryIndex.from_state(DIMS + 1, state)
    with pytest.raises(ValueError, match="lists must"):
        QueryIndex.from_state(DIMS, {**state, "lists": state["lists"][:-1]})
    with pytest.raises(ValueError, match="lists must"):
        QueryIndex.from_state(DIMS, {**state, "lists": state["lists"] + len(state["centroids"])})
    with pytest.raises(ValueError, match="centroids must"):
        QueryIndex.from_state(DIMS, {**state, "centroids": state["centroids"][:, :-1]})

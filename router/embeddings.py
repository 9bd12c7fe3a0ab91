"""Nearest past queries by cosine, and query embeddings of many texts cached on disk.

``QueryIndex`` holds every past query's embedding. Up to ``exact_limit`` rows
(default 20,000) it searches exactly, by one matrix product; past that it also
keeps a faiss inverted-file index (IndexIVFFlat, inner product) and searches
that, because exact search grows linearly (5-17 ms a query at 100k rows and
150 ms at 1M, on one thread) while the router must decide in a few ms.

Invariants:

* Row ids are positions in insertion order, in both modes; ``vectors`` always
  holds every row, so callers can read neighbours' embeddings.
* Deterministic: the same rows added in the same order, in any batching, give
  the same answers. The centroids are trained once, with a fixed seed and one
  faiss thread, on exactly the first ``exact_limit + 1`` rows; every row is
  then filed under its nearest centroid, in insertion order, and never moves.
* ``state()`` / ``from_state()`` carry the rows, the centroids and each row's
  list, so a restored index answers identically without re-training.
* Cosines returned are exact inner products of the found rows (IVFFlat keeps
  the rows uncompressed); only which rows are found is approximate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.query_embedder import Embedder

FloatMatrix = npt.NDArray[np.float32]
IntMatrix = npt.NDArray[np.int64]
IntVector = npt.NDArray[np.int64]

# Relative like the settings' default data dir ("var"), which git ignores.
DEFAULT_CACHE_DIR = Path("var") / "cache" / "embeddings"


def normalise_rows(vectors: npt.ArrayLike) -> FloatMatrix:
    """L2-normalise each row so that a dot product is the cosine."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero vector stays zero (cosine 0 to everything) instead of becoming NaN.
    normalised: FloatMatrix = (matrix / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
    return normalised


# Past this many rows the search goes approximate (see the module docstring).
DEFAULT_EXACT_LIMIT = 20_000
# The inverted file: at most this many lists, each trained on at least
# ROWS_PER_LIST rows (faiss's k-means wants a few dozen points a centroid; 16 a
# list still gave the recall below). 1024 lists over the first 20,001 rows.
MAX_LISTS = 1024
ROWS_PER_LIST = 16
# Lists scanned per query. Measured by benchmarks/router_latency.py (dcrouter's
# questions embedded by the int8 MiniLM, then noisy copies; 300 test questions,
# k=50, one thread, a shared 2-core box): recall@50 against exact search 0.960 at
# 100k rows and 0.968 at 1M (16 probes: about 0.92), in p50 0.32 ms / 2.6 ms a
# search against 16.7 ms / 151 ms exact.
PROBES = 32
# k-means seed: fixed so that a restart trains the same centroids.
TRAINING_SEED = 1234


def _load_faiss() -> Any:
    """faiss, imported on first need so that importing the router costs nothing."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is in the lock
        raise RuntimeError(
            "QueryIndex needs faiss-cpu beyond its exact_limit; install the locked "
            "requirements (requirements.lock)"
        ) from error
    return faiss


class QueryIndex:
    """Top-N stored rows by cosine: exact up to ``exact_limit`` rows, faiss
    IndexIVFFlat (MAX_LISTS lists, PROBES probed) beyond."""

    def __init__(self, dimensions: int, *, exact_limit: int = DEFAULT_EXACT_LIMIT) -> None:
        if exact_limit < 0:
            raise ValueError("exact_limit must be >= 0")
        self.dimensions = dimensions
        self.exact_limit = exact_limit
        # Rows grow by doubling so that adding one query is amortised O(1).
        self._rows: FloatMatrix = np.zeros((16, dimensions), dtype=np.float32)
        self._size = 0
        # Set once the limit is crossed: the faiss index (a second copy of the
        # rows, in list order) and each row's list, kept for state().
        self._ivf: Any = None
        self._lists: IntVector = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> FloatMatrix:
        return self._rows[: self._size]

    @property
    def approximate(self) -> bool:
        """Whether searches go through the inverted file."""
        return self._ivf is not None

    def add(self, vectors: npt.ArrayLike) -> range:
        """Store vectors (normalised here); returns the ids given to them, in order."""
        rows = normalise_rows(vectors)
        if rows.shape[1] != self.dimensions:
            raise ValueError(f"expected {self.dimensions} dimensions, got {rows.shape[1]}")
        needed = self._size + rows.shape[0]
        if needed > self._rows.shape[0]:
            grown = np.zeros((max(needed, 2 * self._rows.shape[0]), self.dimensions), np.float32)
            grown[: self._size] = self._rows[: self._size]
            self._rows = grown
        self._rows[self._size : needed] = rows
        first, self._size = self._size, needed
        if self._ivf is not None:
            self._file(first, needed)
        elif self._size > self.exact_limit:
            self._train()
            self._file(0, needed)
        return range(first, needed)

    def search(self, queries: npt.ArrayLike, n: int) -> tuple[IntMatrix, FloatMatrix]:
        """Ids and cosines of the n nearest stored rows per query, nearest first."""
        q = normalise_rows(queries)
        if q.shape[1] != self.dimensions:
            raise ValueError(f"expected {self.dimensions} dimensions, got {q.shape[1]}")
        k = min(n, self._size)
        if k <= 0:
            empty = np.zeros((q.shape[0], 0))
            return empty.astype(np.int64), empty.astype(np.float32)
        if self._ivf is None:
            return self._exact(q, k)
        cosines, ids = self._ivf.search(q, k)
        # The probed lists can hold fewer than k rows (faiss pads with -1): those
        # queries, rare at the sizes where this index is used, are answered exactly.
        short = (ids < 0).any(axis=1)
        if short.any():
            ids[short], cosines[short] = self._exact(q[short], k)
        return ids.astype(np.int64), cosines.astype(np.float32)

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Plain arrays from which ``from_state`` rebuilds an identical index:
        ``rows``, and once approximate ``centroids`` and ``lists`` (each row's list).

        Read-only views, not copies (1.5 GB of rows at 1M): stored rows are never
        rewritten, so they stay valid while the index keeps growing.
        """
        state: dict[str, npt.NDArray[Any]] = {"rows": self.vectors}
        if self._ivf is not None:
            quantizer = self._ivf.quantizer
            state["centroids"] = quantizer.reconstruct_n(0, quantizer.ntotal)
            state["lists"] = self._lists[: self._size]
        for key, value in state.items():
            view = value.view()
            view.flags.writeable = False
            state[key] = view
        return state

    @classmethod
    def from_state(
        cls,
        dimensions: int,
        state: Mapping[str, npt.NDArray[Any]],
        *,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
    ) -> QueryIndex:
        """The index ``state()`` described. Stored centroids and lists are reused
        as they are (no k-means, no assignment); a state without them past
        ``exact_limit`` trains, as adding its rows would.

        The rows array is taken over, not copied (at 1M rows the copy would cost
        as much as the rest): the caller must not write to it afterwards. The
        index itself never writes to it: it is full, so the next add reallocates.
        """
        # Kept bit for bit: normalising again could move them by an ulp.
        rows = np.ascontiguousarray(state["rows"], dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != dimensions:
            raise ValueError(f"rows must be (n, {dimensions}), got {rows.shape}")
        index = cls(dimensions, exact_limit=exact_limit)
        if len(rows):
            index._rows = rows
            index._size = len(rows)
        if "centroids" in state:
            centroids = np.ascontiguousarray(state["centroids"], dtype=np.float32)
            lists = np.ascontiguousarray(state["lists"], dtype=np.int64)
            if centroids.ndim != 2 or centroids.shape[1] != dimensions:
                raise ValueError(f"centroids must be (lists, {dimensions}), got {centroids.shape}")
            if lists.shape != (len(rows),) or (
                len(lists) and (lists.min() < 0 or lists.max() >= len(centroids))
            ):
                raise ValueError("lists must give each row a list number below len(centroids)")
            index._restore(centroids)
            index._file(0, len(rows), lists)
        elif len(rows) > exact_limit:
            index._train()
            index._file(0, len(rows))
        return index

    # Internals ---------------------------------------------------------------------

    def _exact(self, q: FloatMatrix, k: int) -> tuple[IntMatrix, FloatMatrix]:
        sims = q @ self.vectors.T
        if k < self._size:
            # argpartition is O(rows); only the k survivors get sorted.
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(self._size), (q.shape[0], self._size)).copy()
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1).astype(np.int64)
        return ids, np.take_along_axis(top_sims, order, axis=1).astype(np.float32)

    def _train(self) -> None:
        """Centroids from the first ``exact_limit + 1`` rows only, so that the batch
        sizes rows came in cannot change them."""
        sample = np.ascontiguousarray(self._rows[: self.exact_limit + 1])
        ivf = self._new_ivf(max(1, min(MAX_LISTS, len(sample) // ROWS_PER_LIST)))
        ivf.cp.seed = TRAINING_SEED
        # ROWS_PER_LIST already keeps the lists fed; this only silences faiss's warning.
        ivf.cp.min_points_per_centroid = min(ROWS_PER_LIST, len(sample) // ivf.nlist)
        ivf.train(sample)
        self._ivf = ivf

    def _restore(self, centroids: FloatMatrix) -> None:
        ivf = self._new_ivf(len(centroids))
        ivf.quantizer.add(centroids)
        # A quantizer holding nlist centroids is the whole of an IVF index's training.
        ivf.is_trained = True
        self._ivf = ivf

    def _new_ivf(self, lists: int) -> Any:
        faiss = _load_faiss()
        # One thread: the same k-means and search answers on every run, and no
        # thread pool competing with the request handlers. Process-wide in faiss.
        faiss.omp_set_num_threads(1)
        quantizer = faiss.IndexFlatIP(self.dimensions)
        ivf = faiss.IndexIVFFlat(quantizer, self.dimensions, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.nprobe = min(PROBES, lists)
        self._lists = np.zeros(self._rows.shape[0], dtype=np.int64)
        return ivf

    def _file(self, first: int, end: int, lists: IntVector | None = None) -> None:
        """Append rows [first, end) to the inverted file, under ``lists`` or, when
        not given, under their nearest centroids; row i gets faiss id i."""
        if end == first:
            return  # faiss refuses an empty batch
        faiss = _load_faiss()
        rows = np.ascontiguousarray(self._rows[first:end])
        if lists is None:
            _, nearest = self._ivf.quantizer.search(rows, 1)
            lists = np.ascontiguousarray(nearest[:, 0], dtype=np.int64)
        if end > len(self._lists):
            grown = np.zeros(max(end, 2 * len(self._lists)), dtype=np.int64)
            grown[:first] = self._lists[:first]
            self._lists = grown
        self._lists[first:end] = lists
        ids = np.arange(first, end, dtype=np.int64)
        # add_core with the lists given: what IndexIVF.add does after its own assignment.
        self._ivf.add_core(
            end - first, faiss.swig_ptr(rows), faiss.swig_ptr(ids), faiss.swig_ptr(lists)
        )


def texts_key(texts: Sequence[str]) -> str:
    """sha256 over the texts, each length-prefixed so that boundaries count."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def embed_texts(
    texts: Sequence[str], embedder: Embedder, *, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> FloatMatrix:
    """Each text embedded alone, exactly as a live query is (int8 activations are
    scaled per call, so a padded batch would differ slightly), read from or
    written to ``cache_dir`` when given, under the embedder's name."""
    path = None if cache_dir is None else cache_dir / f"{embedder.name}-{texts_key(texts)}.npy"
    if path is not None and path.is_file():
        cached = np.load(path)
        if cached.shape == (len(texts), embedder.dimensions):
            return normalise_rows(cached)
    vectors = normalise_rows(np.stack([embedder.embed(text) for text in texts]))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so that a killed run never leaves a truncated cache file.
        partial = path.with_suffix(".partial.npy")
        np.save(partial, vectors)
        partial.replace(path)
    return vectors

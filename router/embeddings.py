"""Nearest past queries by cosine, and query embeddings of many texts cached on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router.query_embedder import Embedder

FloatMatrix = npt.NDArray[np.float32]
IntMatrix = npt.NDArray[np.int64]

# Relative like the settings' default data dir ("var"), which git ignores.
DEFAULT_CACHE_DIR = Path("var") / "cache" / "embeddings"


def normalise_rows(vectors: npt.ArrayLike) -> FloatMatrix:
    """L2-normalise each row so that a dot product is the cosine."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A zero vector stays zero (cosine 0 to everything) instead of becoming NaN.
    normalised: FloatMatrix = (matrix / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
    return normalised


class QueryIndex:
    """Exact top-N search by one matrix product: at 10^5 rows of 384 floats
    that is ~40M multiply-adds per query, a few ms, with no approximate index to keep."""

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        # Rows grow by doubling so that adding one query is amortised O(1).
        self._rows: FloatMatrix = np.zeros((16, dimensions), dtype=np.float32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def vectors(self) -> FloatMatrix:
        return self._rows[: self._size]

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
        return range(first, needed)

    def search(self, queries: npt.ArrayLike, n: int) -> tuple[IntMatrix, FloatMatrix]:
        """Ids and cosines of the n nearest stored rows per query, nearest first."""
        q = normalise_rows(queries)
        k = min(n, self._size)
        if k == 0:
            empty = np.zeros((q.shape[0], 0))
            return empty.astype(np.int64), empty.astype(np.float32)
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

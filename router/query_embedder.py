"""Query texts to unit vectors, for one request at a time, with a small memory.

Routing embeds every request before it is answered, so this path is the
router's main cost: the sentence-transformers model is called directly (no
``encode`` bookkeeping), texts are cut at the model's maximum length, and the
vectors of recent texts are remembered (a repeated system prompt + question
costs one dictionary lookup).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    dimensions: int

    def embed(self, text: str) -> Vector: ...


class SentenceEmbedder:
    """A loaded sentence-transformers model (MiniLM in Tailor) behind ``embed``."""

    def __init__(self, model: Any, *, remembered: int = 4096) -> None:
        self.model = model
        self.dimensions = int(model.get_embedding_dimension())
        self.remembered = remembered
        self._recent: OrderedDict[bytes, Vector] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, *, remembered: int = 4096) -> SentenceEmbedder:
        # Imported here: loading torch and the model is slow and must not happen at import.
        from storage.model_store import load_sentence_embedder

        return cls(load_sentence_embedder(), remembered=remembered)

    def embed(self, text: str) -> Vector:
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        with self._lock:
            cached = self._recent.get(key)
            if cached is not None:
                self._recent.move_to_end(key)
                return cached
        vector = self._compute(text)
        with self._lock:
            self._recent[key] = vector
            if len(self._recent) > self.remembered:
                self._recent.popitem(last=False)
        return vector

    def _compute(self, text: str) -> Vector:
        import torch

        features = self.model.preprocess([text])
        with torch.inference_mode():
            output = self.model(features)["sentence_embedding"][0]
        vector = output.float().numpy().astype(np.float32)
        norm = float(np.linalg.norm(vector))
        result: Vector = vector / max(norm, 1e-12)
        result.setflags(write=False)  # shared between callers through the memory
        return result


def use_one_blas_thread() -> None:
    """Process-wide: numpy's BLAS on one thread.

    OpenBLAS threads spin for a while after each call; routing runs numpy (the
    neighbour search) and torch (MiniLM) back to back, and the spinning threads
    took the cores torch needed: decisions measured 2-3x slower than the
    embedding alone. The search is one matrix-vector product, memory-bound,
    so a single BLAS thread loses nothing there.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")

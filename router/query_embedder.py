"""Query texts to unit vectors, for one request at a time, with a small memory.

Routing embeds every request before it is answered, so this path is the
router's main cost. The service uses MiniLM as an int8 ONNX model run by
onnxruntime (``OnnxQueryEmbedder``, ~90 us a token on one core, 4.5x faster than
torch float32, which ``SentenceEmbedder`` keeps as the reference);
texts are cut at ``MAX_QUERY_TOKENS``, and the vectors of recent texts
are remembered (a repeated prompt costs one dictionary lookup). Every stored
query vector must come from the same embedder as the live ones: the offline
evaluation uses this one too.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.errors import ModelStoreError

Vector = npt.NDArray[np.float32]
# Texts are cut to their first 32 tokens. The encoder's time grows with every token (~90 us
# a token on one core here: 256 tokens took 28 ms, past a decision's whole p99 budget), and
# on dcrouter the served estimate routed as well from the first 32, 64 or 128 tokens as from
# MiniLM's own limit of 256 (test AIQ 0.592 / 0.588 / 0.593 / 0.586, docs/benchmarks.md):
# the start of a question says what kind it is. Chats are routed on their latest user turn.
MAX_QUERY_TOKENS = 32
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Embedder(Protocol):
    name: str  # which embedding space: vectors of different names do not compare
    dimensions: int

    def embed(self, text: str) -> Vector: ...


class _RememberingEmbedder:
    """``embed`` with a memory of recent texts; subclasses compute one vector."""

    dimensions: int

    def __init__(self, *, remembered: int) -> None:
        self.remembered = remembered
        self._recent: OrderedDict[bytes, Vector] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, text: str) -> Vector:
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        with self._lock:
            cached = self._recent.get(key)
            if cached is not None:
                self._recent.move_to_end(key)
                return cached
        vector = _unit(self._compute(text))
        with self._lock:
            self._recent[key] = vector
            if len(self._recent) > self.remembered:
                self._recent.popitem(last=False)
        return vector

    def _compute(self, text: str) -> npt.NDArray[np.float32]:
        raise NotImplementedError


def _unit(vector: npt.NDArray[np.float32]) -> Vector:
    result: Vector = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
    result.setflags(write=False)  # shared between callers through the memory
    return result


class OnnxQueryEmbedder(_RememberingEmbedder):
    """MiniLM as the int8 ONNX model of the model store (``tailor models prepare``),
    run by onnxruntime on one thread: what the service routes with."""

    # Vectors of texts cut at another length are another space (cached apart, snapshots
    # rebuilt), hence the length in the name.
    name = f"minilm-int8-{MAX_QUERY_TOKENS}"

    def __init__(self, session: Any, tokenizer: Any, *, remembered: int = 4096) -> None:
        super().__init__(remembered=remembered)
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = int(tokenizer.model_max_length)
        self.dimensions = int(session.get_outputs()[0].shape[-1])

    @classmethod
    def load(cls, store_dir: Path, *, remembered: int = 4096) -> OnnxQueryEmbedder:
        # Imported here: onnxruntime and transformers are slow to import.
        import onnxruntime
        from transformers import AutoTokenizer

        from models.store import embedding_model_dir, query_encoder_path

        path = query_encoder_path(store_dir)
        if not path.is_file():
            raise ModelStoreError(f"no query encoder at {path}; run `tailor models prepare`")
        options = onnxruntime.SessionOptions()
        # One query at a time: a second thread mostly waits, and the serving
        # threads need the other core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            # The fused SkipLayerNormalization runs ~7x slower than plain
            # Add + LayerNormalization on the CPUs measured.
            disabled_optimizers=["SkipLayerNormFusion"],
        )
        tokenizer = AutoTokenizer.from_pretrained(embedding_model_dir())
        tokenizer.model_max_length = min(tokenizer.model_max_length, MAX_QUERY_TOKENS)
        return cls(session, tokenizer, remembered=remembered)

    def _compute(self, text: str) -> npt.NDArray[np.float32]:
        encoded = self.tokenizer(
            [text], truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feeds = {name: encoded[name].astype(np.int64) for name in ONNX_INPUTS}
        output: npt.NDArray[np.float32] = self.session.run(None, feeds)[0][0]
        return output


class SentenceEmbedder(_RememberingEmbedder):
    """A loaded sentence-transformers model (float32 torch), as a reference."""

    name = f"minilm-float-{MAX_QUERY_TOKENS}"

    def __init__(self, model: Any, *, remembered: int = 4096) -> None:
        super().__init__(remembered=remembered)
        self.model = model
        self.dimensions = int(model.get_embedding_dimension())

    @classmethod
    def load(cls, *, remembered: int = 4096) -> SentenceEmbedder:
        # Imported here: loading torch and the model is slow and must not happen at import.
        from models.store import load_sentence_embedder

        model = load_sentence_embedder()
        model.max_seq_length = MAX_QUERY_TOKENS  # cut as the service cuts
        return cls(model, remembered=remembered)

    def _compute(self, text: str) -> npt.NDArray[np.float32]:
        import torch

        features = self.model.preprocess([text])
        with torch.inference_mode():
            output = self.model(features)["sentence_embedding"][0]
        vector: npt.NDArray[np.float32] = output.float().numpy().astype(np.float32)
        return vector


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

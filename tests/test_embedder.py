from __future__ import annotations

import numpy as np
import pytest

from models.store import EMBEDDING_DIMENSIONS, load_sentence_embedder

# Every test loads an embedding model.
pytestmark = pytest.mark.slow


def test_minilm_loads_from_its_package_and_embeds_meaningfully() -> None:
    embedder = load_sentence_embedder()
    vectors = embedder.encode(
        [
            "How do I reverse a list in Python?",
            "What is the way to invert the order of a Python list?",
            "The Eiffel Tower is in Paris.",
        ],
        normalize_embeddings=True,
    )
    assert isinstance(vectors, np.ndarray)
    assert vectors.shape == (3, EMBEDDING_DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert paraphrase > 0.7
    assert unrelated < 0.3


def test_the_float_query_embedder_matches_encode_and_remembers_recent_texts() -> None:
    from router.query_embedder import SentenceEmbedder

    model = load_sentence_embedder()
    embedder = SentenceEmbedder(model, remembered=2)
    texts = ["How do I reverse a list in Python?", "The Eiffel Tower is in Paris.", "x " * 600]
    expected = model.encode(texts, normalize_embeddings=True)
    for text, vector in zip(texts, expected, strict=True):
        got = embedder.embed(text)
        assert got.shape == (EMBEDDING_DIMENSIONS,) and got.dtype == np.float32
        assert np.allclose(got, vector, atol=1e-5)
    # A recent text comes from memory (the very same array) until two newer ones push it out.
    kept = embedder.embed(texts[2])
    assert embedder.embed(texts[2]) is kept
    embedder.embed(texts[0])
    embedder.embed(texts[1])
    again = embedder.embed(texts[2])
    assert again is not kept and np.array_equal(again, kept)


def test_the_services_int8_query_embedder_stays_close_to_float_minilm() -> None:
    from router.query_embedder import OnnxQueryEmbedder, SentenceEmbedder
    from tests.server import prepared_model_store

    fast = OnnxQueryEmbedder.load(prepared_model_store())
    reference = SentenceEmbedder.load()
    texts = [
        "How do I reverse a list in Python?",
        "What is the way to invert the order of a Python list?",
        "The Eiffel Tower is in Paris.",
        "Q: There are 3 houses in a row, numbered 1 to 3. " * 40,  # cut at MAX_QUERY_TOKENS
    ]
    vectors = np.stack([fast.embed(t) for t in texts])
    assert vectors.shape == (4, EMBEDDING_DIMENSIONS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = [float(v @ reference.embed(t)) for v, t in zip(vectors, texts, strict=True)]
    assert min(cosines) > 0.97
    assert float(vectors[0] @ vectors[1]) > 0.7 > 0.3 > float(vectors[0] @ vectors[2])
    # Past the cut nothing counts: a routing decision's time is bounded by the cut's length.
    assert np.array_equal(fast.embed(texts[3] + " Who owns the zebra?"), vectors[3])

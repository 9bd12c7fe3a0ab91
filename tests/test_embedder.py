from __future__ import annotations

import numpy as np

from storage.model_store import EMBEDDING_DIMENSIONS, load_sentence_embedder


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

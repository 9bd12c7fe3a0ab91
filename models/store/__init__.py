"""The model store: the packaged GGUF base models, converted once to safetensors.

``prepare_models`` fills the store (slow, once: ``tailor models prepare``);
``models.store.add`` adds an operator's own models beside them (``tailor models add``);
``load_prepared`` lists what it holds (fast, at every server start). A prepared
model directory loads with plain ``AutoModelForCausalLM.from_pretrained(path)``
and ``AutoTokenizer.from_pretrained(path)``.
"""

from models.errors import ModelStoreError
from models.store.embedder import (
    EMBEDDING_DIMENSIONS,
    EMBEDDING_MODEL_ID,
    embedding_model_dir,
    load_sentence_embedder,
)
from models.store.packaged import PACKAGED_MODELS, PackagedModel
from models.store.prepare import PreparedModel, load_prepared, prepare_models
from models.store.query_encoder import prepare_query_encoder, query_encoder_path

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "EMBEDDING_MODEL_ID",
    "PACKAGED_MODELS",
    "ModelStoreError",
    "PackagedModel",
    "PreparedModel",
    "embedding_model_dir",
    "load_prepared",
    "load_sentence_embedder",
    "prepare_models",
    "prepare_query_encoder",
    "query_encoder_path",
]

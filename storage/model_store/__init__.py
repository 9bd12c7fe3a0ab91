"""The model store: the packaged GGUF base models, converted once to safetensors.

``prepare_models`` fills the store (slow, once: ``tailor models prepare``);
``load_prepared`` lists what it holds (fast, at every server start). A prepared
model directory loads with plain ``AutoModelForCausalLM.from_pretrained(path)``
and ``AutoTokenizer.from_pretrained(path)``.
"""

from storage.errors import ModelStoreError
from storage.model_store.packaged import PACKAGED_MODELS, PackagedModel
from storage.model_store.prepare import PreparedModel, load_prepared, prepare_models

__all__ = [
    "PACKAGED_MODELS",
    "ModelStoreError",
    "PackagedModel",
    "PreparedModel",
    "load_prepared",
    "prepare_models",
]

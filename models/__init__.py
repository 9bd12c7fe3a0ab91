"""Tailor's model layer: the base models as files, and what every use of them shares.

- ``models.store``: the packaged GGUF base models, converted once to safetensors
  (``tailor models prepare``) and listed at every start; beside them the sentence
  embedder and the router's int8 ONNX query encoder.
- ``models.store.add``: an operator's own model (a safetensors directory or a GGUF
  file) added to the store beside them, or removed (``tailor models add`` / ``remove``).
- ``models.catalog``: the prepared models registered as ``base_models`` rows, and
  their prices; adding and removing a model with its row.
- ``models.architectures``: the model families Tailor serves, one list for the store
  and adapter validation.
- ``models.device``: what a device setting (``auto``...) means, for serving's model
  host, the fine-tune worker and Ray Serve's resource request alike.
- ``models.chat_format``: how a conversation becomes a model's prompt tokens, the same
  for serving and for training.
- ``models.safetensors_header``: the one bounded safetensors header reader, for the
  model store and for adapter validation.
- ``models.errors``: ``ModelStoreError``.

Its place in the layers (``pyproject.toml``, ``[tool.importlinter]``):
``serving -> router | finetune -> adapters -> models -> storage``. It is below
``adapters`` (validation reads headers here and checks adapters against prepared
models) and above ``storage`` (the catalog writes ``base_models`` rows; a
``ModelStoreError`` is a ``StorageError``). It imports no ``serving``, ``router``,
``finetune`` or ``adapters``.

Nothing happens at import, and this package root imports nothing, so that
``models.device`` and ``models.chat_format`` stay as light as they are on the serving
and training paths (no SQL, no torch until asked); torch, transformers, gguf and onnx
are imported inside the functions that need them.
"""

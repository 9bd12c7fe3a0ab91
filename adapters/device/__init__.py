"""The device side of LoRA experts: the code that runs next to a model on its GPU (or CPU).

- ``adapters.device.multi_lora``: the fixed slot pool, the multi-LoRA layers and
  ``MultiLoraModel`` that serve many experts per batch, and the CoMiGS gate that
  mixes a user's generalists and specialist per token (training uses the same gate).
- ``adapters.device.slot_cache``: what one model replica keeps in its slots, leased
  per request, and how an invalidation event frees them.

Invariant: nothing here reaches SQL. The device side imports neither SQLAlchemy nor
``storage`` nor the catalog (``adapters.registry``, ``adapters.validation``,
``adapters.file_format``, ``adapters.peft_interop``, ``adapters.invalidation``), so it
imports on a bare GPU host. What it shares with the catalog is SQL-free and lives at
the package root: ``adapters.lora_weights`` (validated weights in memory),
``adapters.expert_sets`` (which experts a request uses), ``adapters.invalidation_event``
and ``adapters.errors``. Weights reach it only through a ``fetch`` callable its caller
supplies (the registry's validated load). The ``forbidden`` contract in
``pyproject.toml`` and ``tests/test_layers.py`` hold this.

This package root imports nothing: import the modules (``from adapters.device.multi_lora
import MultiLoraModel``).
"""

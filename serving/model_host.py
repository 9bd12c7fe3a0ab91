"""Loads a base model from the model store and puts an engine in front of it.

The model is wrapped for multi-LoRA serving (a fixed slot pool), and the
engine leases the slots of each request's expert set from the replica's
tiered adapter cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from adapters.expert_sets import ExpertRef
from adapters.registry import AdapterRegistry
from models.device import pick_device
from serving.engine.engine import Engine, EngineConfig
from serving.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class HostedModel:
    model_id: str
    tokenizer: Any
    engine: Engine
    slots: AdapterSlotCache
    context_length: int
    has_chat_template: bool


def enforced_context_length(own: int, settings: Settings) -> int:
    """The context a request to a model gets: the model's own, capped by the setting."""
    return min(own, settings.engine.max_context_tokens)


def load_hosted_model(
    *,
    model_id: str,
    path: Path,
    context_length: int,
    registry: AdapterRegistry,
    settings: Settings,
) -> HostedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    device = pick_device(settings.engine.device)
    # float32 on CPU (bf16 matmuls are slow there); bf16 on GPUs.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = model.to(device)
    model.train(False)
    lora = MultiLoraModel.wrap(
        model, num_slots=settings.engine.adapter_slots, max_rank=settings.engine.max_adapter_rank
    )

    def fetch(ref: ExpertRef) -> Any:
        return registry.load_weights(sha256=ref.sha256, base_model_id=ref.base_model_id)

    slots = AdapterSlotCache(lora, fetch=fetch)
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(int(tokenizer.eos_token_id))
    limit = enforced_context_length(context_length, settings)
    engine = Engine(
        model_id=model_id,
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=eos_ids,
        config=EngineConfig(
            max_batch=settings.engine.max_batch,
            max_queue=settings.engine.max_queue,
            context_length=limit,
        ),
        lora=lora,
        slots=slots,
    )
    engine.start()
    logger.info(
        "%s loaded on %s in %.2f s (%d adapter slots, context %d)",
        model_id,
        device,
        time.perf_counter() - started,
        settings.engine.adapter_slots,
        limit,
    )
    return HostedModel(
        model_id=model_id,
        tokenizer=tokenizer,
        engine=engine,
        slots=slots,
        context_length=limit,
        has_chat_template=tokenizer.chat_template is not None,
    )

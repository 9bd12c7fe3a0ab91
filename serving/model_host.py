"""Loads a base model from the model store and puts an engine in front of it.

The model is wrapped for multi-LoRA serving (a fixed slot pool), and the
engine leases the slots of each request's expert set from the replica's
tiered adapter cache. ``check_serves`` runs a model about to be added to the
store through the same path once, so that a model the engine cannot run is
refused when it is added, not when every model is loaded at the next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
    def fetch(ref: ExpertRef) -> Any:
        return registry.load_weights(sha256=ref.sha256, base_model_id=ref.base_model_id)

    return _host(
        model_id=model_id, path=path, context_length=context_length, fetch=fetch, settings=settings
    )


# The check's prompt and length: a few tokens show the whole path works.
_CHECK_PROMPT = "The capital of France is"
_CHECK_TOKENS = 4


def check_serves(model_id: str, path: Path, context_length: int, settings: Settings) -> None:
    """Load the model at ``path`` as serving does (multi-LoRA wrapped, on the configured
    device), generate a few tokens through a running engine, and stop it again.

    Raises ``ModelRefused`` saying what failed: the model is no model this engine serves.
    """
    from models.errors import ModelRefused
    from serving.engine.requests import GenerationRequest
    from serving.engine.sampling import SamplingParams

    def no_adapters(ref: ExpertRef) -> Any:
        raise ModelRefused(f"the engine check of {model_id} asks for no adapter")

    try:
        hosted = _host(
            model_id=model_id,
            path=path,
            context_length=context_length,
            fetch=no_adapters,
            settings=settings,
        )
    except ModelRefused:
        raise
    except Exception as exc:  # whatever the model or the wrapper cannot do
        raise ModelRefused(f"{model_id}: the engine cannot load it: {exc}") from None
    try:
        ids = tuple(hosted.tokenizer(_CHECK_PROMPT).input_ids)
        request = GenerationRequest(
            f"check-{model_id}", ids, SamplingParams(max_tokens=_CHECK_TOKENS, temperature=0)
        )
        # Whatever it answers (a random model may end at once): it ran.
        hosted.engine.submit(request).wait(timeout=settings.engine.request_timeout_seconds)
    except Exception as exc:  # a failed request, a timeout
        raise ModelRefused(f"{model_id}: the engine cannot run it: {exc}") from None
    finally:
        hosted.engine.stop()


def _host(
    *,
    model_id: str,
    path: Path,
    context_length: int,
    fetch: Callable[[ExpertRef], Any],
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

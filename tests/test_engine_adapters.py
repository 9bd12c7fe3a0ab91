"""The engine serves each row with its own experts: outputs match peft, row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.lora_weights import LoraWeights
from adapters.peft_interop import export_peft_dir
from serving.engine.engine import Engine, EngineConfig
from serving.engine.requests import GenerationRequest
from serving.engine.sampling import SamplingParams
from storage.tables import AdapterKind
from tests.adapter_factory import random_lora
from tests.test_engine import Loaded

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
TOKENS = 16


def expert(name: str) -> ExpertRef:
    return ExpertRef(name, f"{name}-v1", 1, AdapterKind.SPECIALIST, "0" * 64, MODEL)


@pytest.fixture(scope="module")
def smollm() -> Loaded:
    return Loaded(MODEL)


def peft_reference(path: Path, lora: LoraWeights, ids: list[int], tmp_path: Path) -> list[int]:
    export_peft_dir(lora, tmp_path / "peft")
    base: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model: Any = PeftModel.from_pretrained(base, tmp_path / "peft")
    model.train(False)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)
    tokens: list[int] = out[0, len(ids) :].tolist()
    return tokens


def test_rows_with_different_adapters_match_peft_each(smollm: Loaded, tmp_path: Path) -> None:
    path = smollm.model.name_or_path
    shapes = BaseModelShapes.from_model_dir(Path(path))
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    loras = {
        "adp_a": random_lora(
            shapes, base_model_id=MODEL, seed=11, rank=8, scale=0.08, target_modules=targets
        ),
        "adp_b": random_lora(shapes, base_model_id=MODEL, seed=12, rank=4, scale=0.08),
    }
    ids = smollm.chat_ids("Name a colour.")
    expected_a = smollm.tokenizer.decode(
        [
            t
            for t in peft_reference(Path(path), loras["adp_a"], ids, tmp_path)
            if t not in smollm.eos
        ],
        skip_special_tokens=True,
    )
    expected_base = smollm.reference(ids, TOKENS)
    assert expected_a != expected_base  # the adapter really changes the answer

    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train(False)
    lora = MultiLoraModel.wrap(model, num_slots=4, max_rank=8)
    slots = AdapterSlotCache(lora, fetch=lambda ref: loras[ref.adapter_id])
    engine = Engine(
        model_id=MODEL,
        model=model,
        tokenizer=smollm.tokenizer,
        eos_token_ids=smollm.eos,
        config=EngineConfig(context_length=2048),
        lora=lora,
        slots=slots,
    )
    engine.start()
    try:
        params = SamplingParams(max_tokens=TOKENS, temperature=0)
        sets = [
            ExpertSet(MODEL, specialist=expert("adp_a")),
            None,
            ExpertSet(MODEL, specialist=expert("adp_b")),
            ExpertSet(MODEL, specialist=expert("adp_a")),
        ]
        handles = [
            engine.submit(GenerationRequest(f"r{i}", tuple(ids), params, experts=s))
            for i, s in enumerate(sets)
        ]
        texts = [h.wait(120).text for h in handles]
    finally:
        engine.stop()
    assert texts[0] == expected_a and texts[3] == expected_a
    assert texts[1] == expected_base
    assert texts[2] not in (expected_a, expected_base)
    assert slots.leased_slots() == 0  # every lease was given back

"""The engine on a GPU: greedy output equal to HF ``generate`` and to peft, with CUDA graphs.

GPU only (each test skips without CUDA, saying so). Run on the lent GPU with
``TAILOR_TEST_MODEL_STORE=<dir holding smollm2-135m-instruct/config.json and
gemma-3-270m/config.json> pytest tests/test_engine_cuda.py``: the real
architectures of both packaged models with random weights (speed and
equality do not depend on the values), in float32 with TF32 off, so that
greedy tokens compare exactly. The CPU tests of the runner
(tests/test_engine_model_runner.py) guard the same equalities eagerly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.lora_weights import TARGET_MODULES, LoraWeights
from serving.engine.config import EngineConfig
from serving.engine.engine import Engine
from serving.engine.model_runner import ModelRunner, RowState
from serving.engine.requests import GenerationRequest
from serving.engine.sampling import SamplingParams
from storage.tables import AdapterKind
from tests.adapter_factory import random_lora

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent H200)"
)

ARCHITECTURES = ("smollm2-135m-instruct", "gemma-3-270m")
NEW_TOKENS = 24
# Token id t is the character chr(BASE + t): the engine's text maps back to ids.
BASE = 0x10000


class IdDecoder:
    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str:
        return "".join(chr(BASE + t) for t in token_ids)


def ids_of(text: str) -> list[int]:
    return [ord(c) - BASE for c in text]


@pytest.fixture(autouse=True)
def exact_float32() -> Iterator[None]:
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def real_architecture(name: str, **overrides: Any) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    store = os.environ.get("TAILOR_TEST_MODEL_STORE")
    if not store or not (Path(store) / name / "config.json").is_file():
        pytest.skip(f"TAILOR_TEST_MODEL_STORE must hold {name}/config.json")
    config = AutoConfig.from_pretrained(Path(store) / name)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    return model.to("cuda").train(False)


def prompts(vocab: int, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 17, 64, 33, 2, 48, 9, 40][:count]
    return [torch.randint(10, vocab - 10, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(model: Any, prompt: Sequence[int]) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([list(prompt)], device="cuda"),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
        )
    return [int(t) for t in out[0, len(prompt) :]]


def serve(model: Any, prompts_: list[list[int]], experts: list[ExpertSet | None], **kw: Any) -> Any:
    engine = Engine(
        model_id="gpu",
        model=model,
        tokenizer=IdDecoder(),
        eos_token_ids=set(),
        config=EngineConfig(max_batch=8, context_length=256),
        **kw,
    )
    engine.start()
    try:
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0)
        handles = [
            engine.submit(GenerationRequest(f"r{i}", tuple(p), params, experts[i]))
            for i, p in enumerate(prompts_)
        ]
        return [ids_of(h.wait(300).text) for h in handles]
    finally:
        engine.stop()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_engine_greedy_equals_hf_generate(name: str) -> None:
    model = real_architecture(name)
    batch = prompts(model.config.vocab_size, 6)
    served = serve(model, batch, [None] * len(batch))
    assert served == [hf_greedy(model, p) for p in batch]


def test_a_sliding_window_model_equals_hf_generate_past_its_window() -> None:
    model = real_architecture("gemma-3-270m", sliding_window=16)
    batch = prompts(model.config.vocab_size, 4)
    assert serve(model, batch, [None] * len(batch)) == [hf_greedy(model, p) for p in batch]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_each_rows_adapter_equals_peft_with_that_adapter(name: str) -> None:
    from peft import PeftModel

    from adapters.peft_interop import export_peft_dir

    model = real_architecture(name)
    shapes = BaseModelShapes.from_config(model.config.to_dict())
    loras: dict[str, LoraWeights] = {
        f"a{i}": random_lora(
            shapes, base_model_id="gpu", rank=8, seed=i, target_modules=TARGET_MODULES
        )
        for i in range(3)
    }
    batch = prompts(model.config.vocab_size, 6)
    names = [f"a{i % 3}" for i in range(len(batch))]
    experts: list[ExpertSet | None] = [
        ExpertSet(
            "gpu", specialist=ExpertRef(n, f"{n}-v1", 1, AdapterKind.SPECIALIST, "0" * 64, "gpu")
        )
        for n in names
    ]
    lora = MultiLoraModel.wrap(model, num_slots=4, max_rank=8)
    slots = AdapterSlotCache(lora, fetch=lambda ref: loras[ref.adapter_id])
    served = serve(model, batch, experts, lora=lora, slots=slots)

    reference = real_architecture(name)
    with tempfile.TemporaryDirectory() as scratch:
        peft_model: Any = None
        for n, weights in loras.items():
            export_peft_dir(weights, Path(scratch) / n)
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(reference, Path(scratch) / n, adapter_name=n)
            else:
                peft_model.load_adapter(Path(scratch) / n, adapter_name=n)
        expected = []
        for n, p in zip(names, batch, strict=True):
            peft_model.set_adapter(n)
            expected.append(hf_greedy(peft_model, p))
    assert served == expected


class Tracked:
    def __init__(self, runner: ModelRunner, prompt: list[int]) -> None:
        self.row: RowState = runner.new_row(
            request_id=str(len(prompt)),
            prompt_ids=tuple(prompt),
            params=SamplingParams(max_tokens=64, temperature=0),
            lease=None,
            adapted=False,
        )


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_graph_replayed_steps_equal_eager_steps_as_rows_come_and_go(name: str) -> None:
    model = real_architecture(name)
    graphs = ModelRunner(model, max_rows=16, context_length=256, cuda_graphs=True)
    eager = ModelRunner(model, max_rows=16, context_length=256, cuda_graphs=False)
    batch = prompts(model.config.vocab_size, 8)

    def both(step: Any) -> None:
        with torch.inference_mode():
            a, b = step(graphs), step(eager)
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
        assert torch.equal(a.argmax(-1), b.argmax(-1))

    rows: dict[int, list[Tracked]] = {id(graphs): [], id(eager): []}

    def admit(prompt_ids: list[list[int]], keep: list[int]) -> Any:
        def step(runner: ModelRunner) -> torch.Tensor:
            new = [Tracked(runner, p) for p in prompt_ids]
            prefill = runner.prefill([t.row for t in new])
            runner.join(prefill, keep)
            for index in keep:
                new[index].row.pending_token = int(prefill.logits[index].argmax())
                rows[id(runner)].append(new[index])
            return prefill.logits

        return step

    def decode(runner: ModelRunner) -> torch.Tensor:
        mine = rows[id(runner)]
        logits = runner.decode([t.row for t in mine]).ordered()
        for t, token in zip(mine, logits.argmax(-1).tolist(), strict=True):
            t.row.pending_token = token
        return logits

    def leave(indices: list[int]) -> Any:
        def step(runner: ModelRunner) -> torch.Tensor:
            mine = rows[id(runner)]
            rows[id(runner)] = [t for i, t in enumerate(mine) if i not in indices]
            runner.retain([t.row for t in rows[id(runner)]])
            return torch.zeros(1)

        return step

    both(admit(batch[:3], [0, 1, 2]))
    for _ in range(6):
        both(decode)
    both(admit(batch[3:6], [0, 2]))  # one ends at once: a hole
    for _ in range(6):
        both(decode)
    both(leave([0, 2]))
    both(admit(batch[6:], [0, 1]))  # into the holes
    for _ in range(70):  # past 128 columns: a wider graph
        both(decode)
    assert graphs.graphs_recorded >= 3 and eager.graphs_recorded == 0

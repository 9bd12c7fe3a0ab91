"""The continuous-batching engine on the real SmolLM2 and Gemma-3 models (CPU)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.engine.engine import Engine, EngineConfig, EngineOverloaded
from serving.engine.requests import Event, Failed, Finished, GenerationRequest, RequestHandle
from serving.engine.sampling import SamplingParams
from tests.server import prepared_model_store

CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gravity to a child.",
    "List three fruits.",
    "Say hello in Spanish.",
]


class Loaded:
    def __init__(self, model_id: str) -> None:
        path = prepared_model_store() / model_id
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.train(False)
        eos = self.model.generation_config.eos_token_id
        self.eos = {eos} if isinstance(eos, int) else set(eos)

    def chat_ids(self, text: str) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True
        )
        ids: list[int] = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return ids

    def reference(self, ids: list[int], max_new_tokens: int) -> str:
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False
            )
        new = [t for t in out[0, len(ids) :].tolist() if t not in self.eos]
        text: str = self.tokenizer.decode(new, skip_special_tokens=True)
        return text

    def engine(self, **config: Any) -> Engine:
        engine = Engine(
            model_id="test",
            model=self.model,
            tokenizer=self.tokenizer,
            eos_token_ids=self.eos,
            config=EngineConfig(**{"context_length": 4096, **config}),
        )
        engine.start()
        return engine


# Loading the model and generating on it take seconds: every test that takes it is slow.
@pytest.fixture(scope="module")
def smollm() -> Loaded:
    return Loaded("smollm2-135m-instruct")


@pytest.fixture
def engine(smollm: Loaded) -> Iterator[Engine]:
    running = smollm.engine()
    yield running
    running.stop()


def greedy(ids: list[int], max_tokens: int, request_id: str = "r") -> GenerationRequest:
    return GenerationRequest(
        request_id, tuple(ids), SamplingParams(max_tokens=max_tokens, temperature=0)
    )


async def finished(events: AsyncIterator[Event]) -> Finished:
    """The rest of a request's events, up to how it ended."""
    async for event in events:
        if isinstance(event, Finished):
            return event
        if isinstance(event, Failed):
            raise event.error
    raise AssertionError("the events ended without a Finished")


@pytest.mark.slow
def test_greedy_output_in_a_busy_batch_equals_generate_alone(
    smollm: Loaded, engine: Engine
) -> None:
    prompts = [smollm.chat_ids(p) for p in CHAT_PROMPTS]
    lengths = [24, 8, 30, 16, 12]
    expected = [smollm.reference(ids, n) for ids, n in zip(prompts, lengths, strict=True)]

    # Requests arrive while others run, and leave at different steps: each is
    # sent once the one before it has begun to answer.
    async def staggered() -> list[Finished]:
        loop = asyncio.get_running_loop()
        streams: list[AsyncIterator[Event]] = []
        for index, (ids, n) in enumerate(zip(prompts, lengths, strict=True)):
            stream = engine.submit(greedy(ids, n, f"r{index}"), loop=loop).events()
            first = await anext(stream)
            assert not isinstance(first, Finished | Failed), first
            streams.append(stream)
        return [await finished(stream) for stream in streams]

    results = asyncio.run(asyncio.wait_for(staggered(), 120))
    assert [r.text for r in results] == expected
    assert engine.stats.steps < sum(lengths)  # rows really shared decode steps


@pytest.mark.slow
def test_a_long_prompt_is_prefilled_in_chunks_while_the_batch_decodes(smollm: Loaded) -> None:
    engine = smollm.engine(prefill_budget=16)
    try:
        short = smollm.chat_ids("Say hello in Spanish.")
        long = smollm.chat_ids(" ".join(CHAT_PROMPTS) + " Answer the first question only.")
        chunks = math.ceil(len(long) / 16)
        assert chunks >= 4
        expected = [smollm.reference(short, 40), smollm.reference(long, 8)]

        async def scenario() -> tuple[list[Finished], int]:
            loop = asyncio.get_running_loop()
            short_stream = engine.submit(greedy(short, 40, "short"), loop=loop).events()
            await anext(short_stream)  # running
            long_stream = engine.submit(greedy(long, 8, "long"), loop=loop).events()
            steps = engine.stats.steps
            await anext(long_stream)  # its whole prompt is in the cache
            between = engine.stats.steps - steps
            return [await finished(short_stream), await finished(long_stream)], between

        results, between = asyncio.run(asyncio.wait_for(scenario(), 120))
        assert [r.text for r in results] == expected
        # The short request kept decoding between the long prompt's chunks.
        assert between >= chunks - 1
    finally:
        engine.stop()


@pytest.mark.slow
def test_gemma_base_model_continues_text_as_generate_does() -> None:
    gemma = Loaded("gemma-3-270m")
    engine = gemma.engine()
    try:
        prompts = [
            gemma.tokenizer("The Eiffel Tower is")["input_ids"],
            gemma.tokenizer("Water boils at a temperature of")["input_ids"],
        ]
        expected = [gemma.reference(ids, 12) for ids in prompts]
        handles = [engine.submit(greedy(ids, 12, f"g{i}")) for i, ids in enumerate(prompts)]
        assert [h.wait(120).text for h in handles] == expected
    finally:
        engine.stop()


@pytest.mark.slow
def test_stop_sequences_end_the_text_before_them(smollm: Loaded, engine: Engine) -> None:
    ids = smollm.chat_ids("Describe the sea in two sentences.")
    full = engine.submit(greedy(ids, 40)).wait(60).text
    middle = len(full) // 2
    stop = full[middle : middle + 3]
    request = GenerationRequest(
        "s", tuple(ids), SamplingParams(max_tokens=40, temperature=0, stop=("#never#", stop))
    )
    stopped = engine.submit(request).wait(60)
    assert stopped.reason == "stop"
    assert stopped.text == full[: full.find(stop)]


@pytest.mark.slow
def test_length_cancel_and_timeout(smollm: Loaded, engine: Engine) -> None:
    ids = smollm.chat_ids("Tell me a long story about a dragon.")
    assert engine.submit(greedy(ids, 5)).wait(60).reason == "length"

    async def cancel_once_answering() -> Finished:
        handle = engine.submit(greedy(ids, 400), loop=asyncio.get_running_loop())
        stream = handle.events()
        first = await anext(stream)
        assert not isinstance(first, Finished | Failed), first
        handle.cancel()
        return await finished(stream)

    cancelled = asyncio.run(asyncio.wait_for(cancel_once_answering(), 60))
    assert cancelled.reason == "cancelled" and 0 < cancelled.completion_tokens < 400

    late = GenerationRequest(
        "t",
        tuple(ids),
        SamplingParams(max_tokens=400, temperature=0),
        deadline=time.monotonic() + 0.3,
    )
    timed_out = engine.submit(late).wait(60)
    assert timed_out.reason == "timeout" and timed_out.completion_tokens < 400


@pytest.mark.slow
def test_seeded_sampling_does_not_depend_on_the_batch(smollm: Loaded, engine: Engine) -> None:
    ids = smollm.chat_ids("Invent a name for a cat.")
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=1234)
    alone = engine.submit(GenerationRequest("a", tuple(ids), params)).wait(60).text
    others = [engine.submit(greedy(smollm.chat_ids(p), 20)) for p in CHAT_PROMPTS]
    busy = engine.submit(GenerationRequest("b", tuple(ids), params)).wait(60).text
    for other in others:
        other.wait(60)
    assert alone == busy


@pytest.mark.slow
def test_bad_requests_and_a_full_queue(smollm: Loaded) -> None:
    engine = smollm.engine(max_queue=2, max_batch=1)
    try:
        ids = smollm.chat_ids("Hi")
        with pytest.raises(ValueError, match="context length"):
            engine.submit(greedy(ids * 1000, 10))
        with pytest.raises(ValueError, match="empty"):
            engine.submit(greedy([], 10))
        handles = []
        with pytest.raises(EngineOverloaded):
            for index in range(10):
                handles.append(engine.submit(greedy(ids, 50, f"q{index}")))
        for handle in handles:
            handle.cancel()
        # The engine is still healthy after the refusals.
        assert engine.submit(greedy(ids, 3)).wait(60).completion_tokens == 3
    finally:
        engine.stop()


def test_sampling_parameters_are_validated() -> None:
    for bad in (
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"top_p": 0.0},
        {"stop": ("",)},
        {"stop": ("a", "b", "c", "d", "e")},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


@pytest.mark.slow
def test_admission_orders_by_latency_objective_then_predicted_length(smollm: Loaded) -> None:
    engine = smollm.engine(max_batch=1)
    try:
        ids = smollm.chat_ids("Tell me a long story about a dragon.")
        blocker = engine.submit(greedy(ids, 40, "blocker"))  # holds the only row
        started = time.monotonic()
        while engine.stats.waiting:
            assert time.monotonic() - started < 60, "the blocker was never admitted"
            time.sleep(0.005)
        window = math.floor(time.monotonic()) + 100.0

        def request(name: str, due: float | None, predicted: int) -> GenerationRequest:
            return GenerationRequest(
                name,
                tuple(ids),
                SamplingParams(max_tokens=2, temperature=0),
                slo_deadline=due,
                predicted_tokens=predicted,
            )

        waiting = [
            request("no-objective", None, 1),
            request("due-later-long", window + 0.1, 50),
            request("due-later-short", window + 0.2, 10),
            request("due-first", window - 50, 200),
        ]
        handles = [engine.submit(r) for r in waiting]
        done: list[str] = []
        lock = threading.Lock()

        def wait_for(handle: RequestHandle) -> None:
            handle.wait(60)
            with lock:
                done.append(handle.request.request_id)

        threads = [threading.Thread(target=wait_for, args=(h,)) for h in handles]
        for thread in threads:
            thread.start()
        blocker.wait(60)
        for thread in threads:
            thread.join(60)
        # Due first wins whatever its length; within one window the shorter goes first.
        assert done == ["due-first", "due-later-short", "due-later-long", "no-objective"]
    finally:
        engine.stop()

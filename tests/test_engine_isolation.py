"""One request's failure in the engine fails that request alone.

A tiny random llama (no real weights: these tests take seconds) behind a
wrapper that misbehaves on chosen token ids, so that a test decides which
row gets non-finite logits or makes the forward pass raise, and when:

- a prompt holding ``NAN_NOW`` gets NaN logits from its prefill;
- a prompt holding ``NAN_LATER`` is made to generate ``NAN_FED``, and a row
  fed ``NAN_FED`` gets NaN logits: it fails in the middle of its answer;
- a prompt holding ``CRASH_NOW`` makes the prefill forward raise;
- a prompt holding ``CRASH_LATER`` is made to generate ``CRASH_FED``, and a
  decode step fed ``CRASH_FED`` raises (the whole batch's forward fails).

The random model never generates a marker (nor its end-of-sequence token, so
that how long a request runs is up to the test) unless made to.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
import torch
from starlette.requests import ClientDisconnect
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.lora_weights import LoraWeights
from models import chat_format
from models.catalog import register_prepared_models
from models.store import load_prepared
from router import DefaultModelRouter, RouteRequest
from serving.app import create_app
from serving.auth import Principal
from serving.backend import LocalBackend
from serving.completions import CompletionService
from serving.engine.engine import (
    Engine,
    EngineConfig,
    InvalidSampling,
    NonFiniteLogits,
    RequestFailed,
)
from serving.engine.requests import Event, Failed, Finished, GenerationRequest, RequestHandle
from serving.engine.sampling import MAX_SEED, MIN_SEED, SamplingParams
from serving.metrics import Metrics
from serving.openai_schemas import ChatCompletionCreate
from serving.routes.completions import CompletionStream
from serving.runtime import ModelRuntime
from serving.services import Services
from serving.settings import load_settings
from storage.tables import AdapterKind, Scope
from tests.adapter_factory import random_lora
from tests.server import prepared_model_store

MODEL = "tiny"
VOCAB = 128
EOS = 0
NAN_NOW, NAN_LATER, NAN_FED, CRASH_NOW, CRASH_LATER, CRASH_FED = range(120, 126)
# Token id -> text: ASCII and odd unicode (combining marks, zero-width
# characters, astral emoji, a ligature), for the detokenizer and stop sequences.
ODD = [
    "é",
    "ß",
    "漢",
    "字",
    "🙂",
    "\u200b",
    "\u0301",
    "ﬁ",
    "👩\u200d💻",
    "\u202e",
    "Ω",
    "\U0001f600",
]
ALPHABET = ["<eos>"] + [
    (ODD[i % len(ODD)] if i % 5 == 0 else chr(ord("a") + i % 26)) for i in range(1, VOCAB)
]
SAFE_TOKENS = range(1, 120)  # prompt tokens that are no marker
TIMEOUT = 60.0


class CharDecoder:
    """A tokenizer of one character (or grapheme) per token id."""

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str:
        return "".join(ALPHABET[t] for t in token_ids if not (skip_special_tokens and t == EOS))


@dataclass(frozen=True)
class Markers:
    nan_now: int = NAN_NOW
    nan_later: int = NAN_LATER
    nan_fed: int = NAN_FED
    crash_now: int = CRASH_NOW
    crash_later: int = CRASH_LATER
    crash_fed: int = CRASH_FED
    eos: int = EOS

    @property
    def suppressed(self) -> list[int]:
        return [
            self.nan_now,
            self.nan_later,
            self.nan_fed,
            self.crash_now,
            self.crash_later,
            self.crash_fed,
            self.eos,
        ]


class Sabotaged(torch.nn.Module):
    """A model misbehaving on the marker tokens (see the module docstring)."""

    def __init__(self, inner: torch.nn.Module, markers: Markers = Markers()) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.markers = markers

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        m = self.markers
        prefill = "logits_to_keep" in kwargs  # the engine keeps the last logits of prompts only

        def holding(token: int) -> torch.Tensor:
            return (input_ids == token).any(dim=-1)

        if bool(holding(m.crash_now if prefill else m.crash_fed).any()):
            raise RuntimeError("simulated failure of the forward pass")
        output = self.inner(input_ids=input_ids, **kwargs)
        logits = output.logits
        logits[:, :, m.suppressed] = -1e4
        if prefill:
            logits[holding(m.nan_later), -1, m.nan_fed] = 1e4
            logits[holding(m.crash_later), -1, m.crash_fed] = 1e4
            logits[holding(m.nan_now)] = float("nan")
        else:
            logits[holding(m.nan_fed)] = float("nan")
        return output


def tiny_llama(vocab_size: int = VOCAB) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.train(False)
    return model


def expert(name: str) -> ExpertSet:
    ref = ExpertRef(name, f"{name}-v1", 1, AdapterKind.SPECIALIST, "0" * 64, MODEL)
    return ExpertSet(MODEL, specialist=ref)


@dataclass
class Served:
    engine: Engine
    slots: AdapterSlotCache


def serve(*, num_slots: int = 3, max_batch: int = 8) -> Served:
    """An engine over the sabotaged tiny model with two experts: ``good`` and ``broken``
    (every weight 1e38: finite, but its rows' logits are not)."""
    inner: Any = tiny_llama()
    shapes = BaseModelShapes.from_config(inner.config.to_dict())
    good = random_lora(shapes, base_model_id=MODEL, rank=4, scale=0.1)
    broken = LoraWeights(
        base_model_id=MODEL,
        rank=4,
        alpha=8.0,
        target_modules=good.target_modules,
        tensors={name: torch.full_like(t, 1e38) for name, t in good.tensors.items()},
    )
    weights = {"good": good, "broken": broken}
    lora = MultiLoraModel.wrap(inner, num_slots=num_slots, max_rank=4)
    slots = AdapterSlotCache(lora, fetch=lambda ref: weights[ref.adapter_id])
    engine = Engine(
        model_id=MODEL,
        model=Sabotaged(inner),
        tokenizer=CharDecoder(),
        eos_token_ids={EOS},
        config=EngineConfig(max_batch=max_batch, context_length=256),
        lora=lora,
        slots=slots,
    )
    engine.start()
    return Served(engine, slots)


@pytest.fixture
def served() -> Iterator[Served]:
    running = serve()
    yield running
    running.engine.stop()


def request(
    name: str,
    prompt: list[int],
    *,
    max_tokens: int = 12,
    temperature: float = 0.0,
    seed: int | None = None,
    experts: ExpertSet | None = None,
) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    return GenerationRequest(name, tuple(prompt), params, experts=experts)


def with_seed(base: GenerationRequest, seed: int) -> GenerationRequest:
    """``base`` with a seed SamplingParams would refuse: a caller that skipped validation."""
    params = SamplingParams(max_tokens=base.params.max_tokens, temperature=0.7, seed=1)
    object.__setattr__(params, "seed", seed)
    return GenerationRequest(base.request_id, base.prompt_ids, params, experts=base.experts)


@dataclass
class Outcome:
    texts: list[str]
    end: Finished | Failed


async def outcome(handle: RequestHandle) -> Outcome:
    """Every event of ``handle`` up to its final one (the test fails if none comes)."""

    async def collect() -> Outcome:
        texts: list[str] = []
        async for event in handle.events():
            if isinstance(event, Finished | Failed):
                return Outcome(texts, event)
            texts.append(event.text)
        raise AssertionError("the events ended without a final one")

    return await asyncio.wait_for(collect(), TIMEOUT)


async def started(handle: RequestHandle) -> tuple[RequestHandle, Event]:
    """Wait until ``handle`` has produced its first event (it is running)."""
    events = handle.events()
    first = await asyncio.wait_for(anext(events), TIMEOUT)
    return handle, first


def finished(result: Outcome, reason: str = "length") -> Finished:
    assert isinstance(result.end, Finished), result.end
    assert result.end.reason == reason, result.end
    return result.end


def failed(result: Outcome, kind: type[Exception]) -> Exception:
    assert isinstance(result.end, Failed), result.end
    assert isinstance(result.end.error, kind), repr(result.end.error)
    return result.end.error


def idle(engine: Engine) -> None:
    """Wait (with a deadline) until the engine has nothing left running or waiting."""
    deadline = time.monotonic() + TIMEOUT
    while engine.stats.running or engine.stats.waiting:
        assert time.monotonic() < deadline, engine.stats
        time.sleep(0.01)


def still_serves(engine: Engine) -> None:
    answer = engine.submit(request("after", [5, 6, 7], max_tokens=4)).wait(TIMEOUT)
    assert answer.reason == "length" and answer.completion_tokens == 4


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def test_seeds_are_refused_outside_the_signed_64_bit_range(served: Served) -> None:
    for seed in (MAX_SEED + 1, MIN_SEED - 1, 2**64, 1180591620717411303424, -(2**70)):
        with pytest.raises(ValueError, match="seed"):
            SamplingParams(temperature=0.7, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed=True)
    assert (MIN_SEED, MAX_SEED) == (-(2**63), 2**63 - 1)
    # The bounds themselves sample, reproducibly.
    texts = [
        served.engine.submit(request(f"s{seed}", PROMPT, temperature=1.0, seed=seed))
        .wait(TIMEOUT)
        .text
        for seed in (MIN_SEED, MAX_SEED, MIN_SEED, 12345)
    ]
    assert texts[0] == texts[2]
    assert len({texts[0], texts[1], texts[3]}) == 3


def test_a_seed_the_sampler_refuses_fails_only_its_own_request(served: Served) -> None:
    engine = served.engine

    async def scenario() -> tuple[list[Outcome], list[Outcome]]:
        loop = asyncio.get_running_loop()
        witnesses = [
            engine.submit(request("w-greedy", PROMPT, max_tokens=30), loop=loop),
            engine.submit(
                request("w-sampled", PROMPT, max_tokens=30, temperature=0.7, seed=7), loop=loop
            ),
            engine.submit(
                request("w-adapter", PROMPT, max_tokens=30, experts=expert("good")), loop=loop
            ),
        ]
        firsts = [await started(w) for w in witnesses]  # all are streaming now
        bad = [
            engine.submit(with_seed(request("bad-big", PROMPT), 1180591620717411303424), loop=loop),
            engine.submit(
                with_seed(request("bad-neg", PROMPT, experts=expert("good")), -(2**70)), loop=loop
            ),
        ]
        bad_outcomes = [await outcome(b) for b in bad]
        witness_outcomes = [await outcome(handle) for handle, _ in firsts]
        return witness_outcomes, bad_outcomes

    witnesses, bad = asyncio.run(scenario())
    for result in witnesses:
        assert finished(result).completion_tokens == 30
    for result in bad:
        assert "seed" in str(failed(result, InvalidSampling))
    idle(engine)
    assert served.slots.leased_slots() == 0  # the failed request gave its adapter back
    still_serves(engine)


@pytest.mark.parametrize("temperature", [0.0, 0.7], ids=["greedy", "sampled"])
def test_non_finite_logits_fail_only_their_row(served: Served, temperature: float) -> None:
    engine = served.engine

    async def scenario() -> dict[str, Outcome]:
        loop = asyncio.get_running_loop()
        names = {
            "witness": request("witness", PROMPT, max_tokens=20, temperature=temperature, seed=1),
            "good-adapter": request(
                "good-adapter",
                PROMPT,
                max_tokens=20,
                temperature=temperature,
                seed=2,
                experts=expert("good"),
            ),
            "nan-prefill": request("nan-prefill", [*PROMPT, NAN_NOW], temperature=temperature),
            "nan-midway": request("nan-midway", [*PROMPT, NAN_LATER], temperature=temperature),
            "broken-adapter": request(
                "broken-adapter", PROMPT, temperature=temperature, experts=expert("broken")
            ),
        }
        handles = {name: engine.submit(r, loop=loop) for name, r in names.items()}
        return {name: await outcome(h) for name, h in handles.items()}

    results = asyncio.run(scenario())
    assert finished(results["witness"]).completion_tokens == 20
    assert finished(results["good-adapter"]).completion_tokens == 20
    assert "non-finite logits" in str(failed(results["nan-prefill"], NonFiniteLogits))
    # It answered one token, then its logits went bad.
    assert results["nan-midway"].texts == [ALPHABET[NAN_FED]]
    failed(results["nan-midway"], NonFiniteLogits)
    assert "adapter may be broken" in str(failed(results["broken-adapter"], NonFiniteLogits))
    idle(engine)
    assert served.slots.leased_slots() == 0
    assert engine.stats.failed == 3
    still_serves(engine)


def test_a_failing_prefill_fails_only_its_prompt_and_a_failing_decode_ends_every_row(
    served: Served,
) -> None:
    engine = served.engine

    async def prefill_failure() -> dict[str, Outcome]:
        loop = asyncio.get_running_loop()
        running = engine.submit(request("running", PROMPT, max_tokens=40), loop=loop)
        handle, _ = await started(running)
        # These three are admitted in one prefill: only the crashing prompt fails.
        batch = {
            "crash": engine.submit(request("crash", [*PROMPT, CRASH_NOW]), loop=loop),
            "same-prefill": engine.submit(request("same-prefill", PROMPT[:3]), loop=loop),
            "same-prefill-adapter": engine.submit(
                request("same-prefill-adapter", PROMPT, experts=expert("good")), loop=loop
            ),
        }
        results = {name: await outcome(h) for name, h in batch.items()}
        results["running"] = await outcome(handle)
        return results

    results = asyncio.run(prefill_failure())
    assert "prompt" in str(failed(results["crash"], RequestFailed))
    finished(results["same-prefill"])
    finished(results["same-prefill-adapter"])
    assert finished(results["running"]).completion_tokens == 40

    async def decode_failure() -> list[Outcome]:
        loop = asyncio.get_running_loop()
        handles = [
            engine.submit(request(f"row{i}", PROMPT, max_tokens=40, experts=e), loop=loop)
            for i, e in enumerate([None, expert("good")])
        ]
        handles.append(engine.submit(request("crash-later", [*PROMPT, CRASH_LATER]), loop=loop))
        return [await outcome(h) for h in handles]

    # The decode step's forward fails for the whole batch: every row ends, none hangs.
    for result in asyncio.run(decode_failure()):
        assert "decode step" in str(failed(result, RequestFailed))
    idle(engine)
    assert served.slots.leased_slots() == 0
    still_serves(engine)


STOPS = ["é", "漢字", "🙂", "\u200b", "\u0301", "ﬁ", "ab", "zz", "👩\u200d💻", "\u202e", "q"]
BAD_SEEDS = [2**64, 2**70, -(2**70), MAX_SEED + 1, MIN_SEED - 1]
GOOD_SEEDS = [None, 0, -1, MAX_SEED, MIN_SEED, 12345]


@dataclass
class Planned:
    request: GenerationRequest
    cancel: str | None  # None, "before" (before it starts), "midway" (after its first event)
    expect: str  # "clean", "timeout", "bad-seed", "non-finite", "crash", "any"


def plan(rng: random.Random, index: int) -> Planned:
    prompt = [rng.choice(SAFE_TOKENS) for _ in range(rng.randint(1, 30))]
    temperature = rng.choice([0.0, 0.0, 1e-30, 1e-6, 0.7, 2.0, rng.uniform(0.0, 2.0)])
    top_p = rng.choice([1.0, 1e-9, 0.5, rng.uniform(0.01, 1.0)])
    stop = tuple(rng.sample(STOPS, rng.randint(0, 4)))
    max_tokens = rng.randint(1, 40)
    experts = rng.choice([None, None, expert("good"), expert("broken")])
    seed = rng.choice(GOOD_SEEDS)
    expect = "clean"
    if experts is not None and experts.specialist == expert("broken").specialist:
        expect = "non-finite"
    marker = rng.random()
    if marker < 0.08:
        prompt.insert(rng.randrange(len(prompt) + 1), NAN_NOW)
        expect = "non-finite"
    elif marker < 0.16:
        prompt.append(NAN_LATER)
        # It fails once fed its first token, unless it ended on that token.
        expect = "non-finite" if max_tokens > 1 and not stop else "any"
    elif marker < 0.22:
        prompt.insert(rng.randrange(len(prompt) + 1), CRASH_NOW)
        expect = "crash"
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
    )
    if temperature > 0 and rng.random() < 0.12:
        object.__setattr__(params, "seed", rng.choice(BAD_SEEDS))
        expect = "bad-seed"
    deadline = None
    if rng.random() < 0.08:
        deadline = time.monotonic() - 1.0  # already past: never starts
        expect = "timeout"
    cancel = rng.choice([None] * 8 + ["before", "midway"])
    if cancel is not None:
        expect = "any"  # it may also have ended (or failed) before the cancellation landed
    built = GenerationRequest(
        f"fuzz{index}", tuple(prompt), params, experts=experts, deadline=deadline
    )
    return Planned(built, cancel, expect)


@pytest.mark.slow
def test_fuzzed_requests_never_fail_a_well_formed_one() -> None:
    # One slot for the two experts: requests also wait for slots held by others.
    served = serve(num_slots=2, max_batch=12)
    engine = served.engine
    rng = random.Random(20261204)
    plans = [plan(rng, i) for i in range(160)]

    async def run(plan: Planned, handle: RequestHandle) -> Outcome:
        if plan.cancel == "before":
            handle.cancel()
        texts: list[str] = []
        async for event in handle.events():
            if isinstance(event, Finished | Failed):
                return Outcome(texts, event)
            texts.append(event.text)
            if plan.cancel == "midway":
                handle.cancel()
        raise AssertionError(f"{plan.request.request_id}: the events ended without a final one")

    async def scenario() -> tuple[list[Outcome], list[Outcome], list[RequestHandle]]:
        loop = asyncio.get_running_loop()
        witnesses = [
            engine.submit(request("w0", PROMPT, max_tokens=40), loop=loop),
            engine.submit(request("w1", PROMPT, max_tokens=40, temperature=0.9), loop=loop),
            engine.submit(
                request(
                    "w2",
                    PROMPT[:2],
                    max_tokens=40,
                    temperature=1.3,
                    seed=MIN_SEED,
                    experts=expert("good"),
                ),
                loop=loop,
            ),
        ]
        witness_tasks = [asyncio.create_task(outcome(w)) for w in witnesses]
        tasks = []
        handles = []
        for planned in plans:
            handle = engine.submit(planned.request, loop=loop)
            handles.append(handle)
            tasks.append(asyncio.create_task(run(planned, handle)))
            if rng.random() < 0.3:
                await asyncio.sleep(0)  # let the engine interleave admissions
        results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT * 2)
        witness_results = await asyncio.gather(*witness_tasks)
        # Every event the engine published has been delivered by now: nothing
        # may follow a request's final event.
        await asyncio.to_thread(idle, engine)
        for _ in range(3):
            await asyncio.sleep(0)
        return witness_results, results, handles + witnesses

    try:
        witnesses, results, handles = asyncio.run(scenario())
        for result in witnesses:
            assert isinstance(result.end, Finished), result.end
            assert result.end.reason in ("stop", "length")
        for planned, result in zip(plans, results, strict=True):
            name, end = planned.request.request_id, result.end
            if planned.expect == "clean":
                assert isinstance(end, Finished) and end.reason in ("stop", "length"), (name, end)
            elif planned.expect == "timeout":
                assert isinstance(end, Finished) and end.reason == "timeout", (name, end)
            elif planned.expect == "bad-seed":
                assert isinstance(end, Failed) and isinstance(end.error, InvalidSampling), name
            elif planned.expect == "non-finite":
                assert isinstance(end, Failed) and isinstance(end.error, NonFiniteLogits), name
            elif planned.expect == "crash":
                assert isinstance(end, Failed) and isinstance(end.error, RequestFailed), name
        for handle in handles:
            assert handle.ended
            queued = handle._async_events  # nothing came after the final event
            assert queued is not None and queued.empty(), handle.request.request_id
        kinds = {p.expect for p in plans}
        assert {"clean", "timeout", "bad-seed", "non-finite", "crash", "any"} <= kinds
        stats = engine.stats
        assert (stats.running, stats.waiting) == (0, 0)
        assert stats.finished + stats.failed == len(handles)
        assert stats.failed >= sum(p.expect in ("bad-seed", "non-finite", "crash") for p in plans)
        assert served.slots.leased_slots() == 0
        still_serves(engine)
    finally:
        engine.stop()


# ---------------------------------------------------------------- through the API

SMOL = "smollm2-135m-instruct"
ADMIN_KEY = "admin-" + secrets.token_hex(8)


@dataclass
class Api:
    client: httpx.AsyncClient
    runtime: ModelRuntime
    key: dict[str, str]
    user_id: str
    markers: Markers
    texts: dict[int, str]  # marker token id -> text that tokenizes to it in a chat prompt
    metrics: Metrics

    def in_flight(self) -> int:
        return self.runtime.load.snapshot(SMOL).in_flight

    def chat(self, content: str, **fields: Any) -> dict[str, Any]:
        body = {"model": SMOL, "messages": [{"role": "user", "content": content}]}
        return {**body, "max_tokens": 4, **fields}


@asynccontextmanager
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The app with SmolLM2's tokenizer in front of a sabotaged tiny model of its vocabulary.

    httpx's ASGI transport instead of a TestClient, so that a request that
    never answers fails the test (``asyncio.wait_for``) instead of hanging it.
    """
    store = prepared_model_store()
    settings = load_settings(
        storage={
            "data_dir": tmp_path,
            "model_store": store,
            "database_url": f"sqlite:///{tmp_path / 'tailor.db'}",
            "cache_prefix": f"tailor-test-{secrets.token_hex(4)}:",
        },
        server={"admin_key": ADMIN_KEY},
        engine={"models": [SMOL]},
    )
    services = Services.open(settings)
    with services.database.session() as session:
        register_prepared_models(
            session,
            load_prepared(store),
            store_dir=settings.storage.model_store_dir,
            prices=settings.router.prices,
        )
    tokenizer: Any = AutoTokenizer.from_pretrained(store / SMOL)
    # Marker tokens a chat prompt can hold: words near the end of the vocabulary.
    texts: dict[int, str] = {}
    for token in range(len(tokenizer) - 1, 0, -1):
        text = tokenizer.decode([token])
        prompt = chat_format.prompt_ids(tokenizer, [{"role": "user", "content": "say" + text}])
        if token in prompt:
            texts[token] = text
        if len(texts) == 6:
            break
    ids = list(texts)
    markers = Markers(
        nan_now=ids[0],
        nan_later=ids[1],
        nan_fed=ids[2],
        crash_now=ids[3],
        crash_later=ids[4],
        crash_fed=ids[5],
        eos=tokenizer.eos_token_id,
    )
    engine = Engine(
        model_id=SMOL,
        model=Sabotaged(tiny_llama(len(tokenizer)), markers),
        tokenizer=tokenizer,
        eos_token_ids={tokenizer.eos_token_id},
        config=EngineConfig(context_length=2048),
    )
    engine.start()
    runtime = ModelRuntime(
        services, router=DefaultModelRouter(SMOL), backend=LocalBackend({SMOL: engine})
    )
    app = create_app(services, runtime=runtime)
    runtime.start()
    try:
        assert await asyncio.to_thread(runtime.loaded.wait, TIMEOUT), runtime.load_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tailor") as client:
            created = await client.post(
                "/admin/users",
                json={"name": "ada"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            user = created.json()
            key = {"Authorization": f"Bearer {user['api_key']}"}
            yield Api(client, runtime, key, user["id"], markers, texts, app.state.metrics)
    finally:
        runtime.stop()
        engine.stop()
        services.close()


@pytest.mark.models
def test_failed_requests_answer_clearly_and_release_the_load_ledger(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api(tmp_path) as a:

            async def post(body: dict[str, Any]) -> httpx.Response:
                call = a.client.post("/v1/chat/completions", json=body, headers=a.key)
                return await asyncio.wait_for(call, TIMEOUT)

            nan = "say" + a.texts[a.markers.nan_now]
            crash = "say" + a.texts[a.markers.crash_now]
            for body in (a.chat(nan, temperature=0.7), a.chat(nan, temperature=0)):
                answer = await post(body)
                assert answer.status_code == 500, answer.text
                error = answer.json()["error"]
                assert error["code"] == "generation_failed"
                assert "non-finite logits" in error["message"]
                assert a.in_flight() == 0

            answer = await post(a.chat(crash))
            assert answer.status_code == 500
            assert answer.json()["error"]["code"] == "generation_failed"
            assert a.in_flight() == 0

            for content in (nan, crash):
                streamed = await post(a.chat(content, stream=True, temperature=0.7))
                assert streamed.status_code == 200
                events = [
                    line.removeprefix("data: ")
                    for line in streamed.text.splitlines()
                    if line.startswith("data: ")
                ]
                assert events[-1] == "[DONE]"
                assert '"code": "generation_failed"' in events[-2], events
                assert "Traceback" not in streamed.text
                assert a.in_flight() == 0

            # Refused at the edge (the schema, else SamplingParams): nothing reaches the engine.
            for seed in (1180591620717411303424, -(2**70)):
                refused = await post(a.chat("hi", temperature=0.7, seed=seed))
                assert refused.status_code in (400, 422), refused.text
                assert a.in_flight() == 0

            # A stream body closed before it was ever iterated still closes its ticket.
            request_body = ChatCompletionCreate.model_validate(a.chat("hi", max_tokens=30))
            service = CompletionService(a.runtime, a.metrics)
            caller = Principal(user_id=a.user_id, key_id=None, scopes=frozenset({Scope.USER}))
            prepared = await asyncio.to_thread(service.prepare, caller, request_body)
            events_, ticket = service.submit(prepared)
            stream = service.stream(prepared, events_, ticket)
            assert a.in_flight() == 1
            await stream.aclose()
            assert a.in_flight() == 0

            # The client gone before the response's first byte: the route's
            # response closes the body Starlette never started.
            events_, ticket = service.submit(prepared)
            response = CompletionStream(service.stream(prepared, events_, ticket))
            assert a.in_flight() == 1

            async def gone(_message: Any) -> None:
                raise OSError("the client closed the connection")

            async def no_body() -> dict[str, Any]:
                return {"type": "http.disconnect"}

            scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
            with pytest.raises(ClientDisconnect):
                await response(scope, no_body, gone)
            assert a.in_flight() == 0

            fine = await post(a.chat("hi", temperature=0.7, seed=3))
            assert fine.status_code == 200, fine.text
            assert fine.json()["choices"][0]["finish_reason"] == "length"
            assert a.in_flight() == 0

            # An answer that cannot be saved: a stream still ends with an
            # error event and [DONE], never cut off mid-way.
            with sqlite3.connect(tmp_path / "tailor.db") as database:
                database.execute("ALTER TABLE responses RENAME TO responses_gone")
            unsaved = await post(a.chat("hi", stream=True, temperature=0))
            lines = [line for line in unsaved.text.splitlines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]"
            assert '"message": "the answer could not be saved"' in lines[-2], lines
            assert a.in_flight() == 0

    asyncio.run(scenario())


@pytest.mark.models
def test_a_completion_reads_the_callers_user_row_once(tmp_path: Path) -> None:
    """The key's lookup brings the user's routing preferences; routing reads no more."""

    async def scenario() -> None:
        async with api(tmp_path) as a:
            patched = await a.client.patch("/v1/routing", json={"cost_weight": 2.5}, headers=a.key)
            assert patched.status_code == 200
            engine = a.runtime.services.database.engine
            statements: list[str] = []
            routed: list[RouteRequest] = []
            route = a.runtime.router.route

            def recording(request: RouteRequest, candidates: Any) -> Any:
                routed.append(request)
                return route(request, candidates)

            a.runtime.router.route = recording  # type: ignore[method-assign]

            def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
                statements.append(" ".join(statement.split()).lower())

            sqlalchemy.event.listen(engine, "before_cursor_execute", seen)
            try:
                call = a.client.post("/v1/chat/completions", json=a.chat("hi"), headers=a.key)
                answer = await asyncio.wait_for(call, TIMEOUT)
            finally:
                sqlalchemy.event.remove(engine, "before_cursor_execute", seen)
            assert answer.status_code == 200, answer.text
            # The stored preference reached the router, from the key's one query.
            assert [r.cost_weight for r in routed] == [2.5]
            user_reads = [
                s for s in statements if s.startswith("select") and re.search(r"\busers\b", s)
            ]
            assert len(user_reads) == 1, user_reads
            assert "api_keys" in user_reads[0]

    asyncio.run(scenario())

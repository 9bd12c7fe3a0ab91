"""The engine's output processor: token ids to text and events, on a thread of its own.

Alone, fed step outputs by hand with the one-character-per-token decoder of
tests/test_engine_isolation.py; then inside the engine, on the tiny sabotaged
llama there: a stop sequence retires its row with the tokens counted as
before, the model thread never waits for text, and ``stop`` leaves no
request without its end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from serving.engine.config import EngineConfig, EngineStats
from serving.engine.engine import Engine
from serving.engine.errors import EngineStopped, RequestFailed
from serving.engine.output_processor import OutputProcessor, TokenOutput
from serving.engine.requests import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    RequestHandle,
    TextDelta,
    TokenScores,
)
from serving.engine.sampling import SamplingParams
from tests.adapter_factory import random_lora
from tests.test_engine_isolation import (
    ALPHABET,
    EOS,
    MODEL,
    PROMPT,
    TIMEOUT,
    CharDecoder,
    Sabotaged,
    expert,
    idle,
    request,
    tiny_llama,
)

A, B, C, D = (ord(letter) - ord("a") + 26 for letter in "abcd")  # ALPHABET[i] for i % 5 != 0
assert [ALPHABET[t] for t in (A, B, C, D)] == ["a", "b", "c", "d"]
BROKEN = 64  # a token id the failing decoder cannot decode


class Decoder(CharDecoder):
    """``CharDecoder`` that fails on ``BROKEN`` and notes which thread decodes."""

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str:
        self.threads.add(threading.current_thread().name)
        assert self.gate.wait(TIMEOUT)
        if BROKEN in token_ids:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "simulated decoder failure")
        return super().decode(token_ids, skip_special_tokens=skip_special_tokens)


@dataclass
class Processor:
    outputs: OutputProcessor
    decoder: Decoder
    stats: EngineStats
    aborted: list[str] = field(default_factory=list)


@pytest.fixture
def processor() -> Iterator[Processor]:
    decoder = Decoder()
    stats = EngineStats()
    aborted: list[str] = []
    outputs = OutputProcessor(
        name="test-output",
        tokenizer=decoder,
        stats=stats,
        abort=lambda handle: aborted.append(handle.request.request_id),
    )
    outputs.start()
    yield Processor(outputs, decoder, stats, aborted)
    decoder.gate.set()
    outputs.close()


def handle(name: str, *, stop: tuple[str, ...] = (), lead: str = "") -> RequestHandle:
    params = SamplingParams(max_tokens=64, temperature=0, stop=stop)
    return RequestHandle(GenerationRequest(name, (1, 2, 3), params, answer_lead=lead))


def events(handle: RequestHandle) -> list[Event]:
    """Every event of a handle up to its final one (on its thread-safe queue)."""
    seen: list[Event] = []
    while not seen or isinstance(seen[-1], TextDelta):
        seen.append(handle._sync_events.get(timeout=TIMEOUT))
    return seen


def texts(seen: list[Event]) -> list[str]:
    return [event.text for event in seen if isinstance(event, TextDelta)]


def test_tokens_become_text_deltas_and_one_final_event(processor: Processor) -> None:
    outputs = processor.outputs
    first, second = handle("first"), handle("second", lead="a")
    outputs.step([TokenOutput(first, A), TokenOutput(second, A)])
    outputs.step([TokenOutput(first, B), TokenOutput(second, B)])
    outputs.step([TokenOutput(first, C, "length"), TokenOutput(second, EOS, "stop", eos=True)])
    one, two = events(first), events(second)
    assert texts(one) == ["a", "b", "c"]
    assert one[-1] == Finished("length", prompt_tokens=3, completion_tokens=3, text="abc")
    # The end-of-sequence token counts as generated, but shows nothing; the lead is dropped.
    assert texts(two) == ["b"]
    assert two[-1] == Finished("stop", prompt_tokens=3, completion_tokens=3, text="b")
    assert (processor.stats.finished, processor.stats.failed) == (2, 0)
    assert processor.aborted == []


def test_log_probabilities_travel_with_the_text_they_made(processor: Processor) -> None:
    outputs = processor.outputs
    params = SamplingParams(max_tokens=64, temperature=0, stop=("bc",), logprobs=1)
    asked = RequestHandle(GenerationRequest("asked", (1,), params))
    plain = handle("plain")

    def scores(token: int, logprob: float) -> TokenScores:
        return TokenScores(logprob, ((token, logprob),))

    outputs.step([TokenOutput(asked, A, scores=scores(A, -0.1)), TokenOutput(plain, A)])
    # "b" may start the stop sequence "bc": its text is held back, its score waits with it.
    outputs.step([TokenOutput(asked, B, scores=scores(B, -0.2)), TokenOutput(plain, B, "length")])
    outputs.step([TokenOutput(asked, C, scores=scores(C, -0.3))])
    seen = events(asked)
    deltas = [event for event in seen if isinstance(event, TextDelta)]
    # The tokens of the stop sequence made no text: their scores come in a last, empty delta.
    assert [d.text for d in deltas] == ["a", ""]
    assert [[t.token for t in d.logprobs] for d in deltas] == [["a"], ["b", "c"]]
    finished = seen[-1]
    assert isinstance(finished, Finished) and finished.text == "a"
    # Every token the answer consumed, the one that completed the stop included.
    assert finished.logprobs is not None
    assert [(t.token, t.logprob, t.top) for t in finished.logprobs] == [
        ("a", -0.1, (("a", -0.1),)),
        ("b", -0.2, (("b", -0.2),)),
        ("c", -0.3, (("c", -0.3),)),
    ]
    plain_end = events(plain)[-1]
    assert isinstance(plain_end, Finished) and plain_end.logprobs is None


def test_a_stop_sequence_finishes_the_request_and_aborts_its_row(processor: Processor) -> None:
    outputs = processor.outputs
    stopped, other = handle("stopped", stop=("bc",)), handle("other")
    outputs.step([TokenOutput(stopped, A), TokenOutput(other, A)])
    outputs.step([TokenOutput(stopped, B), TokenOutput(other, B)])
    outputs.step([TokenOutput(stopped, C), TokenOutput(other, C)])
    # The model thread ran on before it heard of the stop: never shown.
    outputs.step([TokenOutput(stopped, D), TokenOutput(other, D)])
    outputs.step([TokenOutput(stopped, A, "length"), TokenOutput(other, A, "length")])
    seen = events(stopped)
    # "b" was held back (it could start "bc"), then the stop was found: "a" alone shows.
    assert texts(seen) == ["a"]
    # Tokens up to and including the one that completed the stop sequence.
    assert seen[-1] == Finished("stop", prompt_tokens=3, completion_tokens=3, text="a")
    assert processor.aborted == ["stopped"]
    assert events(other)[-1] == Finished("length", 3, 5, "abcda")
    assert stopped._sync_events.empty()  # nothing after the final event
    assert processor.stats.finished == 2


def test_a_stop_on_the_rows_last_token_needs_no_abort(processor: Processor) -> None:
    stopped = handle("stopped", stop=("b",))
    processor.outputs.step([TokenOutput(stopped, A)])
    processor.outputs.step([TokenOutput(stopped, B, "length")])
    assert events(stopped)[-1] == Finished("stop", 3, 2, "a")
    assert processor.aborted == []  # the model thread ended the row already


def test_held_back_text_is_flushed_when_the_row_ends_otherwise(processor: Processor) -> None:
    held = handle("held", stop=("bc",))
    processor.outputs.step([TokenOutput(held, A)])
    processor.outputs.step([TokenOutput(held, B, "cancelled")])
    seen = events(held)
    assert texts(seen) == ["a", "b"]
    assert seen[-1] == Finished("cancelled", 3, 2, "ab")


def test_a_failing_decoder_fails_its_request_alone(processor: Processor) -> None:
    outputs = processor.outputs
    broken, fine = handle("broken"), handle("fine")
    outputs.step([TokenOutput(broken, A), TokenOutput(fine, A)])
    outputs.step([TokenOutput(broken, BROKEN), TokenOutput(fine, B)])
    outputs.step([TokenOutput(broken, C), TokenOutput(fine, C, "length")])
    seen = events(broken)
    assert texts(seen) == ["a"]
    assert isinstance(seen[-1], Failed) and isinstance(seen[-1].error, RequestFailed)
    assert str(seen[-1].error) == "turning this request's tokens into text failed"
    assert isinstance(seen[-1].error.__cause__, UnicodeDecodeError)
    assert processor.aborted == ["broken"]
    assert events(fine)[-1] == Finished("length", 3, 3, "abc")
    assert (processor.stats.finished, processor.stats.failed) == (1, 1)


def test_the_first_final_event_wins(processor: Processor) -> None:
    outputs = processor.outputs
    failed, finished, unstarted = handle("failed"), handle("finished"), handle("unstarted")
    outputs.step([TokenOutput(failed, A), TokenOutput(finished, A, "length")])
    outputs.fail(failed, RequestFailed("the model failed"), ValueError("why"))
    outputs.fail(finished, RequestFailed("too late"))
    outputs.step([TokenOutput(failed, B, "length")])
    outputs.finish_unstarted(unstarted, "timeout")
    outputs.fail(unstarted, EngineStopped("too late"))
    seen = events(failed)
    assert texts(seen) == ["a"]
    assert isinstance(seen[-1], Failed) and str(seen[-1].error) == "the model failed"
    assert isinstance(seen[-1].error.__cause__, ValueError)
    assert events(finished)[-1] == Finished("length", 3, 1, "a")
    assert events(unstarted) == [Finished("timeout", 3, 0, "")]
    outputs.close()
    for gone in (failed, finished, unstarted):
        assert gone._sync_events.empty()
    assert (processor.stats.finished, processor.stats.failed) == (2, 1)


def test_text_is_made_on_the_processors_thread_not_the_senders(processor: Processor) -> None:
    processor.decoder.gate.clear()  # the decoder blocks
    waiting = handle("waiting")
    started = time.monotonic()
    for _ in range(5):
        processor.outputs.step([TokenOutput(waiting, A)])
    processor.outputs.step([TokenOutput(waiting, B, "length")])
    assert time.monotonic() - started < 1.0  # the sender never waited for the decoder
    assert waiting._sync_events.empty()
    processor.decoder.gate.set()
    assert events(waiting)[-1] == Finished("length", 3, 6, "aaaaab")
    assert processor.decoder.threads == {"test-output"}


def test_close_drains_in_order_and_later_messages_still_end_their_requests(
    processor: Processor,
) -> None:
    outputs = processor.outputs
    processor.decoder.gate.clear()
    queued = [handle(f"q{index}") for index in range(3)]
    for one in queued:
        outputs.step([TokenOutput(one, A)])
        outputs.step([TokenOutput(one, B, "length")])
    closing = threading.Thread(target=outputs.close)
    closing.start()
    time.sleep(0.05)
    assert closing.is_alive()  # waits for what was queued before it
    processor.decoder.gate.set()
    closing.join(TIMEOUT)
    assert not closing.is_alive()
    for one in queued:  # every event was published by the time close returned
        assert one.ended
        assert events(one)[-1] == Finished("length", 3, 2, "ab")
    late = handle("late")
    outputs.fail(late, EngineStopped("the engine stopped"))
    assert late.ended  # processed at once, on the sender's thread
    assert isinstance(events(late)[-1], Failed)


def test_a_processor_never_started_processes_on_close() -> None:
    stats = EngineStats()
    outputs = OutputProcessor(name="never", tokenizer=CharDecoder(), stats=stats, abort=print)
    one = handle("one")
    outputs.step([TokenOutput(one, A, "length")])
    assert not one.ended
    outputs.close()
    assert events(one) == [TextDelta("a", A), Finished("length", 3, 1, "a")]


# ------------------------------------------------------------------ inside the engine


@dataclass
class Served:
    engine: Engine
    slots: AdapterSlotCache


def served_with(decoder: Decoder, *, max_batch: int = 8) -> Served:
    """``serve`` of tests/test_engine_isolation.py (expert ``good`` only) with ``decoder``."""
    inner: Any = tiny_llama()
    shapes = BaseModelShapes.from_config(inner.config.to_dict())
    good = random_lora(shapes, base_model_id=MODEL, rank=4, scale=0.1)
    lora = MultiLoraModel.wrap(inner, num_slots=3, max_rank=4)
    slots = AdapterSlotCache(lora, fetch=lambda ref: good)
    engine = Engine(
        model_id=MODEL,
        model=Sabotaged(inner),
        tokenizer=decoder,
        eos_token_ids={EOS},
        config=EngineConfig(max_batch=max_batch, context_length=256),
        lora=lora,
        slots=slots,
    )
    engine.start()
    return Served(engine, slots)


def test_a_stop_sequence_ends_the_row_with_the_tokens_counted_up_to_it() -> None:
    served = served_with(Decoder())
    engine = served.engine
    try:
        for experts in (None, expert("good")):
            full = engine.submit(request("full", PROMPT, max_tokens=30, experts=experts))
            seen = events(full)
            assert seen[-1] == Finished("length", len(PROMPT), 30, "".join(texts(seen)))
            tokens = [event.token_id for event in seen if isinstance(event, TextDelta)]
            assert len(tokens) == 30  # no stop, no lead: each token shows at once
            text = "".join(texts(seen))
            stop = text[10:12]
            at = text.find(stop)
            # The token that completes the stop sequence is the last one counted.
            counted = next(k for k in range(31) if stop in "".join(ALPHABET[t] for t in tokens[:k]))
            params = SamplingParams(max_tokens=30, temperature=0, stop=(stop,))
            stopped = engine.submit(
                GenerationRequest("stopped", tuple(PROMPT), params, experts=experts)
            )
            seen = events(stopped)
            assert seen[-1] == Finished("stop", len(PROMPT), counted, text[:at])
            assert "".join(texts(seen)) == text[:at]
            # Its row is retired (not running, its slots back) and nothing follows its end.
            idle(engine)
            assert served.slots.leased_slots() == 0
            assert stopped._sync_events.empty()
        assert (engine.stats.finished, engine.stats.failed) == (4, 0)
    finally:
        engine.stop()


def test_the_model_thread_does_not_wait_for_text() -> None:
    decoder = Decoder()
    engine = served_with(decoder).engine
    decoder.gate.clear()  # the decoder blocks: no text can be made
    try:
        handles = [engine.submit(request(f"r{i}", PROMPT, max_tokens=12)) for i in range(3)]
        deadline = time.monotonic() + TIMEOUT
        while engine.stats.generated_tokens < 36 or engine.stats.running:
            assert time.monotonic() < deadline, engine.stats
            time.sleep(0.01)
        # Every token generated and every row retired, while no text was made yet.
        assert not any(one.ended for one in handles)
        decoder.gate.set()
        for one in handles:
            assert one.wait(TIMEOUT).completion_tokens == 12
        assert decoder.threads == {f"engine-{MODEL}-output"}
    finally:
        decoder.gate.set()
        engine.stop()


def test_stop_ends_every_request_before_it_returns() -> None:
    decoder = Decoder()
    served = served_with(decoder, max_batch=2)
    engine = served.engine
    decoder.gate.clear()
    handles = [
        engine.submit(request(f"r{i}", PROMPT, max_tokens=240, experts=expert("good")))
        for i in range(4)
    ]
    deadline = time.monotonic() + TIMEOUT
    while engine.stats.generated_tokens < 4:  # two run, two wait
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stopping = threading.Thread(target=engine.stop)
    stopping.start()
    time.sleep(0.05)
    assert stopping.is_alive()  # the text of what ran is still being made
    decoder.gate.set()
    stopping.join(TIMEOUT)
    assert not stopping.is_alive()
    for one in handles:
        assert one.ended  # every event was published before stop returned
        seen = events(one)
        assert isinstance(seen[-1], Failed) and isinstance(seen[-1].error, EngineStopped)
    assert served.slots.leased_slots() == 0
    assert engine.stats.failed == 4

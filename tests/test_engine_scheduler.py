"""The engine's scheduler alone: queue order, bounds, budgets, drops and slot leases.

No model: requests are handles, the adapter slots a real ``AdapterSlotCache``
over a pool that only counts, and the ends of requests are recorded.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.base_shapes import BaseModelShapes
from adapters.device.slot_cache import AdapterSlotCache
from adapters.errors import InvalidAdapter
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.lora_weights import LoraWeights
from serving.engine.config import EngineConfig, EngineStats
from serving.engine.errors import EngineOverloaded, EngineStopped, RequestFailed
from serving.engine.requests import GenerationRequest, RequestHandle
from serving.engine.sampling import SamplingParams
from serving.engine.scheduler import SLO_WINDOW_SECONDS, Scheduler
from storage.tables import AdapterKind
from tests.adapter_factory import random_lora
from tests.test_engine_isolation import tiny_llama

MODEL = "tiny"
TINY: Any = tiny_llama()
SHAPES = BaseModelShapes.from_config(TINY.config.to_dict())


@dataclass
class Ends:
    """Records how the scheduler ended requests; ``explode`` makes the next end raise."""

    unstarted: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, Exception]] = field(default_factory=list)
    explode: bool = False

    def finish_unstarted(self, handle: RequestHandle, reason: str) -> None:
        if self.explode:
            self.explode = False
            raise RuntimeError("simulated failure while ending a request")
        self.unstarted.append((handle.request.request_id, reason))

    def fail(
        self, handle: RequestHandle, error: Exception, cause: BaseException | None = None
    ) -> None:
        self.failed.append((handle.request.request_id, error))


class CountingPool:
    """The device pool an ``AdapterSlotCache`` fills, without a device."""

    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self.max_experts = 2

    def load(self, slot: int, weights: LoraWeights) -> object:
        return None

    def clear(self, slot: int) -> None:
        return None


def expert(name: str) -> ExpertSet:
    ref = ExpertRef(name, f"{name}-v1", 1, AdapterKind.SPECIALIST, "0" * 64, MODEL)
    return ExpertSet(MODEL, specialist=ref)


def fetch(ref: ExpertRef) -> LoraWeights:
    if ref.adapter_id == "unloadable":
        raise InvalidAdapter("the file is not an adapter")
    return random_lora(SHAPES, base_model_id=MODEL)


def handle(
    name: str,
    *,
    prompt: int = 4,
    max_tokens: int = 8,
    slo: float | None = None,
    predicted: int | None = None,
    deadline: float | None = None,
    experts: ExpertSet | None = None,
) -> RequestHandle:
    request = GenerationRequest(
        name,
        tuple(range(1, prompt + 1)),
        SamplingParams(max_tokens=max_tokens, temperature=0),
        experts=experts,
        deadline=deadline,
        slo_deadline=slo,
        predicted_tokens=predicted,
    )
    return RequestHandle(request)


def scheduler(
    ends: Ends, *, slots: AdapterSlotCache | None = None, **config: Any
) -> tuple[Scheduler, EngineStats]:
    stats = EngineStats()
    built = Scheduler(
        model_id=MODEL,
        config=EngineConfig(**{"max_queue": 16, "max_batch": 8, **config}),
        stats=stats,
        ends=ends,
        slots=slots,
    )
    built.open()
    return built, stats


def names(admitted: list[Any]) -> list[str]:
    return [a.handle.request.request_id for a in admitted]


def test_admission_orders_by_slo_window_then_predicted_length_then_arrival() -> None:
    ends = Ends()
    queue, stats = scheduler(ends)
    window = (math.floor(time.monotonic() / SLO_WINDOW_SECONDS) + 100) * SLO_WINDOW_SECONDS
    for waiting in (
        handle("no-objective", predicted=1),
        handle("due-later-long", slo=window + 0.1, predicted=50),
        handle("due-later-short", slo=window + 0.2, predicted=10),
        handle("due-later-short-2", slo=window + 0.3, predicted=10),
        handle("due-first", slo=window - 50, predicted=200),
        # No prediction: its max_tokens stands for its length.
        handle("no-objective-short", max_tokens=1),
    ):
        queue.add(waiting)
    assert stats.waiting == 6
    assert names(queue.admit(running=0)) == [
        "due-first",
        "due-later-short",
        "due-later-short-2",
        "due-later-long",
        "no-objective",
        "no-objective-short",
    ]
    assert stats.waiting == 0
    assert ends == Ends()


def test_a_full_queue_refuses_but_first_frees_places_of_cancelled_requests() -> None:
    ends = Ends()
    queue, stats = scheduler(ends, max_queue=2)
    first, second = handle("a"), handle("b")
    queue.add(first)
    queue.add(second)
    with pytest.raises(EngineOverloaded, match="2 requests waiting"):
        queue.add(handle("c"))
    second.cancel()
    queue.add(handle("d"))  # took the cancelled one's place
    assert ends.unstarted == [("b", "cancelled")]
    assert stats.waiting == 2
    assert names(queue.admit(running=0)) == ["a", "d"]


def test_a_closed_or_stopped_scheduler_refuses_requests() -> None:
    ends = Ends()
    stats = EngineStats()
    closed = Scheduler(model_id=MODEL, config=EngineConfig(), stats=stats, ends=ends)
    with pytest.raises(EngineStopped, match="not running"):
        closed.add(handle("a"))
    opened, _ = scheduler(ends)
    opened.stop()
    with pytest.raises(EngineStopped):
        opened.add(handle("b"))


def test_the_batch_and_prefill_budgets_bound_each_admission() -> None:
    ends = Ends()
    queue, _ = scheduler(ends, max_batch=4, prefill_budget=25)
    for index in range(5):
        queue.add(handle(f"r{index}", prompt=10))
    # 2 rows x 10 tokens fit the budget of 25; a third would pad to 30.
    assert names(queue.admit(running=0)) == ["r0", "r1"]
    # Three rows run: one place is left in the batch.
    assert names(queue.admit(running=3)) == ["r2"]
    assert queue.admit(running=4) == []
    # A prompt longer than the budget still goes, alone: its first chunk is
    # the budget's worth, the rest is prefilled a chunk a step.
    queue.add(handle("long", prompt=40))
    queue.add(handle("after", prompt=10))
    assert names(queue.admit(running=0)) == ["r3", "r4"]
    assert names(queue.admit(running=0)) == ["long"]
    # With the step's budget partly spent (on a chunk), only what fits the rest goes.
    assert queue.admit(running=1, budget=9) == []
    assert names(queue.admit(running=1, budget=10)) == ["after"]


def test_the_prefill_budget_counts_padding_to_the_longest_prompt() -> None:
    ends = Ends()
    queue, _ = scheduler(ends, prefill_budget=30)
    queue.add(handle("short", prompt=2, predicted=1))
    queue.add(handle("long", prompt=20, predicted=2))
    # 2 + 20 = 22 tokens, but padded: 2 rows x 20 = 40 > 30.
    assert names(queue.admit(running=0)) == ["short"]
    assert names(queue.admit(running=0)) == ["long"]


def test_cancelled_and_expired_waiting_requests_end_without_starting() -> None:
    ends = Ends()
    queue, stats = scheduler(ends)
    cancelled = handle("cancelled")
    queue.add(cancelled)
    queue.add(handle("expired", deadline=time.monotonic() - 1))
    queue.add(handle("fine"))
    cancelled.cancel()
    assert names(queue.admit(running=0)) == ["fine"]
    assert sorted(ends.unstarted) == [("cancelled", "cancelled"), ("expired", "timeout")]
    assert stats.waiting == 0


def test_a_request_waits_in_its_place_while_every_slot_is_leased() -> None:
    ends = Ends()
    slots = AdapterSlotCache(CountingPool(num_slots=2), fetch=fetch)  # one adapter slot
    queue, stats = scheduler(ends, slots=slots)
    queue.add(handle("alice", experts=expert("alice"), predicted=1))
    queue.add(handle("bob", experts=expert("bob"), predicted=2))
    queue.add(handle("base", predicted=3))
    first = queue.admit(running=0)
    # Bob's slot is busy: he goes back to the queue, in front of the base request.
    assert names(first) == ["alice"]
    assert first[0].lease is not None and first[0].lease.expert_slots[0] == 1
    assert stats.waiting == 2 and slots.leased_slots() == 1
    assert queue.admit(running=1) == []  # still busy
    first[0].lease.release()
    second = queue.admit(running=0)
    assert names(second) == ["bob", "base"]
    assert second[0].lease is not None and second[1].lease is None
    assert ends == Ends()


def test_an_adapter_that_cannot_load_fails_its_request_alone() -> None:
    ends = Ends()
    slots = AdapterSlotCache(CountingPool(num_slots=3), fetch=fetch)
    queue, _ = scheduler(ends, slots=slots)
    queue.add(handle("broken", experts=expert("unloadable"), predicted=1))
    queue.add(handle("fine", experts=expert("alice"), predicted=2))
    assert names(queue.admit(running=0)) == ["fine"]
    [(name, error)] = ends.failed
    assert name == "broken" and isinstance(error, RequestFailed)
    assert str(error) == "loading this request's adapters failed: the file is not an adapter"
    assert slots.leased_slots() == 1  # only the admitted request's


def test_a_failure_while_admitting_releases_and_fails_what_was_taken() -> None:
    ends = Ends()
    slots = AdapterSlotCache(CountingPool(num_slots=3), fetch=fetch)
    queue, _ = scheduler(ends, slots=slots)
    # Due before the expired request (whose deadline orders it): taken first.
    queue.add(handle("first", experts=expert("alice"), slo=time.monotonic() - 100))
    queue.add(handle("expired", deadline=time.monotonic() - 1))
    ends.explode = True  # ending the expired request raises
    with pytest.raises(RuntimeError, match="simulated"):
        queue.admit(running=0)
    assert slots.leased_slots() == 0
    assert sorted(name for name, _ in ends.failed) == ["expired", "first"]
    assert all(isinstance(error, RequestFailed) for _, error in ends.failed)


def test_drain_takes_every_waiting_request() -> None:
    ends = Ends()
    queue, stats = scheduler(ends)
    for name in ("a", "b", "c"):
        queue.add(handle(name))
    assert sorted(h.request.request_id for h in queue.drain()) == ["a", "b", "c"]
    assert stats.waiting == 0
    assert queue.admit(running=0) == []


def test_the_model_thread_sleeps_until_there_is_work_or_a_stop() -> None:
    ends = Ends()
    queue, _ = scheduler(ends)
    assert queue.wait_for_work(busy=True)  # running rows: no sleep
    woke: list[bool] = []
    sleeper = threading.Thread(target=lambda: woke.append(queue.wait_for_work(busy=False)))
    sleeper.start()
    time.sleep(0.05)
    assert woke == []  # nothing to do: asleep
    queue.add(handle("a"))
    sleeper.join(5)
    assert woke == [True]
    queue.drain()
    stopper = threading.Thread(target=lambda: woke.append(queue.wait_for_work(busy=False)))
    stopper.start()
    time.sleep(0.05)
    queue.stop()
    stopper.join(5)
    assert woke == [True, False]

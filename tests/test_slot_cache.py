"""The replica-side tiered adapter cache, on a real (tiny, random) llama model."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.device.slot_cache import AdapterSlotCache
from adapters.errors import SlotsExhausted
from adapters.expert_sets import CachedExpertSets, CachedPinnedSets, ExpertRef, ExpertSet
from adapters.invalidation import InvalidationListener
from adapters.invalidation_event import INVALIDATION_CHANNEL, InvalidationEvent
from adapters.lora_weights import LoraWeights
from storage.cache import Cache, open_cache
from storage.tables import AdapterKind
from tests.adapter_factory import random_lora
from tests.backends import REDIS_URL

MODEL = "tiny-llama"
CONFIG = LlamaConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
)
SHAPES = BaseModelShapes.from_config(CONFIG.to_dict())


def ref(adapter: str, version: int, kind: AdapterKind = AdapterKind.SPECIALIST) -> ExpertRef:
    return ExpertRef(
        adapter_id=adapter,
        version_id=f"{adapter}-v{version}",
        version=version,
        kind=kind,
        sha256="0" * 64,
        base_model_id=MODEL,
    )


@dataclass
class Store:
    """Stands in for the registry: weights by version id, counting fetches."""

    weights: dict[str, LoraWeights] = field(default_factory=dict)
    fetches: list[str] = field(default_factory=list)

    def add(self, expert: ExpertRef, *, seed: int, gate_experts: tuple[str, ...] = ()) -> None:
        self.weights[expert.version_id] = random_lora(
            SHAPES, base_model_id=MODEL, seed=seed, gate_experts=gate_experts, scale=0.2
        )

    def fetch(self, expert: ExpertRef) -> LoraWeights:
        self.fetches.append(expert.version_id)
        return self.weights[expert.version_id]


@pytest.fixture
def lora_model() -> MultiLoraModel:
    torch.manual_seed(0)
    model = LlamaForCausalLM(CONFIG)
    model.train(False)
    return MultiLoraModel.wrap(model, num_slots=4, max_rank=8)


def logits(model: MultiLoraModel, slots: tuple[int, ...], gate: int = 0) -> torch.Tensor:
    ids = torch.arange(6).unsqueeze(0)
    with torch.no_grad(), model.routing([list(slots)], [gate]):
        out: torch.Tensor = model.model(ids).logits
    return out


def test_slots_are_reused_loaded_on_miss_and_pinned_while_leased(
    lora_model: MultiLoraModel,
) -> None:
    store = Store()
    experts = [ref(f"adp_{i}", 1) for i in range(4)]
    for i, expert in enumerate(experts):
        store.add(expert, seed=i)
    cache = AdapterSlotCache(lora_model, fetch=store.fetch, cpu_cache_bytes=10**8)

    first = cache.acquire(ExpertSet(MODEL, specialist=experts[0]))
    again = cache.acquire(ExpertSet(MODEL, specialist=experts[0]))
    assert first.expert_slots == again.expert_slots and first.expert_slots[0] != 0
    assert store.fetches == ["adp_0-v1"] and cache.stats.slot_hits == 1

    # Three slots (1..3) for four experts: while 0 is leased it is never evicted.
    leases = [cache.acquire(ExpertSet(MODEL, specialist=e)) for e in experts[1:3]]
    with pytest.raises(SlotsExhausted):
        cache.acquire(ExpertSet(MODEL, specialist=experts[3]))
    first.release()
    again.release()
    for lease in leases:
        lease.release()
    fourth = cache.acquire(ExpertSet(MODEL, specialist=experts[3]))
    assert fourth.expert_slots[0] == first.expert_slots[0]  # the least recently used
    assert cache.stats.evictions == 1
    fourth.release()

    # Expert 0 comes back from the CPU tier, not from the store.
    cache.acquire(ExpertSet(MODEL, specialist=experts[0])).release()
    assert store.fetches.count("adp_0-v1") == 1 and cache.stats.cpu_hits == 1


def test_a_leased_slot_serves_exactly_its_expert(lora_model: MultiLoraModel) -> None:
    store = Store()
    a, b = ref("adp_a", 1), ref("adp_b", 1)
    store.add(a, seed=1)
    store.add(b, seed=2)
    cache = AdapterSlotCache(lora_model, fetch=store.fetch)
    base = logits(lora_model, (0, 0, 0, 0))
    with cache.acquire(ExpertSet(MODEL, specialist=a)) as lease_a:
        with_a = logits(lora_model, lease_a.expert_slots)
    with cache.acquire(ExpertSet(MODEL, specialist=b)) as lease_b:
        with_b = logits(lora_model, lease_b.expert_slots)
    assert not torch.allclose(with_a, base) and not torch.allclose(with_a, with_b)
    with cache.acquire(ExpertSet(MODEL, specialist=a)) as lease_a:
        assert torch.equal(logits(lora_model, lease_a.expert_slots), with_a)


def test_the_gate_applies_only_to_the_generalists_it_was_trained_with(
    lora_model: MultiLoraModel,
) -> None:
    store = Store()
    general = ref("adp_general", 1, AdapterKind.GENERALIST)
    other = ref("adp_other", 1, AdapterKind.GENERALIST)
    mine = ref("adp_mine", 1)
    store.add(general, seed=1)
    store.add(other, seed=2)
    store.add(mine, seed=3, gate_experts=("adp_general",))
    cache = AdapterSlotCache(lora_model, fetch=store.fetch)

    with cache.acquire(ExpertSet(MODEL, generalists=(general,), specialist=mine)) as lease:
        general_slot, mine_slot = lease.expert_slots[:2]
        assert lease.gate_slot == mine_slot
        assert lease.expert_slots == (general_slot, mine_slot, 0, 0)
    with cache.acquire(ExpertSet(MODEL, generalists=(other,), specialist=mine)) as lease:
        assert lease.gate_slot == 0  # trained against another generalist: plain sum


def test_invalidation_frees_old_versions_once_unused(lora_model: MultiLoraModel) -> None:
    store = Store()
    v1, v2 = ref("adp_a", 1), ref("adp_a", 2)
    store.add(v1, seed=1)
    store.add(v2, seed=2)
    cache = AdapterSlotCache(lora_model, fetch=store.fetch)
    lease = cache.acquire(ExpertSet(MODEL, specialist=v1))
    cache.invalidate(InvalidationEvent("adp_a", v2.version_id))
    # Still leased: kept for the running request, but no longer handed out.
    assert "adp_a-v1" not in cache.resident_versions()
    assert cache.leased_slots() == 1
    lease.release()
    assert cache.leased_slots() == 0 and cache.stats.invalidated == 1
    with cache.acquire(ExpertSet(MODEL, specialist=v2)) as new_lease:
        assert new_lease.expert_slots[0] != 0
    assert set(cache.resident_versions()) == {"adp_a-v2"}


def test_a_failed_acquire_leaves_nothing_leased(lora_model: MultiLoraModel) -> None:
    store = Store()
    good, missing = ref("adp_good", 1, AdapterKind.GENERALIST), ref("adp_missing", 1)
    store.add(good, seed=1)
    cache = AdapterSlotCache(lora_model, fetch=store.fetch)
    with pytest.raises(KeyError):
        cache.acquire(ExpertSet(MODEL, generalists=(good,), specialist=missing))
    assert cache.leased_slots() == 0


@pytest.fixture(params=["memory", "redis"])
def shared_cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    url = None if request.param == "memory" else REDIS_URL
    cache = open_cache(url, prefix=f"tailor-test-{secrets.token_hex(4)}:")
    yield cache
    cache.close()


def test_events_from_the_shared_cache_reach_the_replica(shared_cache: Cache) -> None:
    resolved: list[str] = []

    def resolve(base: str, user: str | None, personalize: bool) -> ExpertSet:
        resolved.append(f"{base}/{user}")
        return ExpertSet(base)

    expert_sets = CachedExpertSets(resolve)
    received: list[InvalidationEvent | None] = []
    seen = threading.Event()

    def record(event: InvalidationEvent | None) -> None:
        received.append(event)
        seen.set()

    listener = InvalidationListener(shared_cache, [expert_sets.clear, record])
    listener.start()
    try:
        expert_sets.get(base_model_id=MODEL, user_id="usr_a")
        expert_sets.get(base_model_id=MODEL, user_id="usr_a")
        assert resolved == [f"{MODEL}/usr_a"]
        shared_cache.publish(INVALIDATION_CHANNEL, InvalidationEvent("adp_a", "v2").to_bytes())
        assert seen.wait(5)
        assert received == [InvalidationEvent("adp_a", "v2")]
        expert_sets.get(base_model_id=MODEL, user_id="usr_a")
        assert len(resolved) == 2
    finally:
        listener.stop()


def test_resolved_sets_expire() -> None:
    now = [0.0]
    calls: list[int] = []

    def resolve(base: str, user: str | None, personalize: bool) -> ExpertSet:
        calls.append(1)
        return ExpertSet(base)

    expert_sets = CachedExpertSets(resolve, ttl_seconds=10, clock=lambda: now[0])
    expert_sets.get(base_model_id=MODEL, user_id=None)
    now[0] = 9.0
    expert_sets.get(base_model_id=MODEL, user_id=None)
    now[0] = 10.5
    expert_sets.get(base_model_id=MODEL, user_id=None)
    assert len(calls) == 2


def test_pinned_sets_remember_models_only_and_expire_or_clear() -> None:
    now = [0.0]
    asked: list[str] = []
    pinned = ExpertSet(MODEL, specialist=ref("adp_a", 1))

    def resolve(model_id: str, user_id: str) -> ExpertSet | None:
        asked.append(model_id)
        return pinned if (model_id, user_id) == ("ft:a", "usr_a") else None

    sets = CachedPinnedSets(resolve, ttl_seconds=10, clock=lambda: now[0])
    assert sets.get(model_id="ft:a", user_id="usr_a") == pinned
    assert sets.get(model_id="ft:a", user_id="usr_a") == pinned
    # Another user's id, and an unknown one, are asked each time: never remembered.
    assert sets.get(model_id="ft:a", user_id="usr_b") is None
    assert sets.get(model_id="ft:a", user_id="usr_b") is None
    assert asked == ["ft:a", "ft:a", "ft:a"]
    now[0] = 10.5
    sets.get(model_id="ft:a", user_id="usr_a")
    sets.clear(None)
    sets.get(model_id="ft:a", user_id="usr_a")
    assert len(asked) == 5


def test_routes_skip_modules_no_routed_expert_targets(lora_model: MultiLoraModel) -> None:
    lora_model.load(1, random_lora(SHAPES, base_model_id=MODEL, target_modules=("q_proj",)))
    lora_model.load(2, random_lora(SHAPES, base_model_id=MODEL, target_modules=("v_proj",)))
    with lora_model.routing([[1], [2], [0]]) as route:
        assert route.active_modules == frozenset(
            (layer, module) for layer in range(SHAPES.num_layers) for module in ("q_proj", "v_proj")
        )
    with lora_model.routing([[0], [0]]) as route:
        assert route.active_modules == frozenset()
    # Skipping changes nothing: a row's output equals the unskipped computation.
    ids = torch.arange(6).unsqueeze(0)
    with torch.no_grad():
        with lora_model.routing([[1]]):
            skipped = lora_model.model(ids).logits
        with lora_model.routing([[1]]) as route:
            object.__setattr__(route, "active_modules", None)
            full = lora_model.model(ids).logits
    assert torch.equal(skipped, full)

"""The adapter registry on both deployments: SQLite + in-process cache, PostgreSQL + Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from adapters.errors import AdapterNotFound, InvalidAdapter, InvalidTransition
from adapters.invalidation_event import INVALIDATION_CHANNEL, InvalidationEvent
from adapters.lora_weights import LoraWeights
from adapters.registry import HOT_COPY_PREFIX, AdapterRegistry
from storage.cache import open_cache
from storage.repositories import AdapterRepository, UserRepository
from storage.tables import AdapterKind, AdapterState, Decider
from tests.adapter_factory import random_lora
from tests.backends import REDIS_URL, postgres_schema
from tests.finetune_fixtures import registry_on

MODEL = "smollm2-135m-instruct"
# Nothing listens on port 1: every call fails to connect at once.
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdapterRegistry]:
    if request.param == "sqlite+memory":
        with registry_on(f"sqlite:///{tmp_path / 'tailor.db'}", tmp_path) as found:
            yield found
    else:
        with postgres_schema() as url, registry_on(url, tmp_path, REDIS_URL) as found:
            yield found


def new_user(registry: AdapterRegistry, name: str) -> str:
    with registry.database.session() as session:
        return UserRepository(session).create(name=name).id


def lora(registry: AdapterRegistry, seed: int = 0, *, rank: int = 4) -> LoraWeights:
    shapes = registry.base_spec(MODEL).shapes
    return random_lora(shapes, base_model_id=MODEL, seed=seed, rank=rank)


def test_a_candidate_is_stored_and_loads_back_identically(registry: AdapterRegistry) -> None:
    ada = new_user(registry, "ada")
    weights = lora(registry)
    version = registry.register_candidate(weights, kind=AdapterKind.SPECIALIST, user_id=ada)
    assert (version.version, version.state) == (1, AdapterState.CANDIDATE)
    assert version.sha256 is not None and registry.blobs.exists(version.sha256)
    assert version.rank == 4 and version.target_modules == ["q_proj", "v_proj"]

    loaded = registry.load_weights(sha256=version.sha256, base_model_id=MODEL)
    assert loaded.tensors.keys() == weights.tensors.keys()
    for name, tensor in weights.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    # The first load read the blob store and left a hot copy; the second hits it.
    assert (registry.counters.blob_reads, registry.counters.hot_copy_hits) == (1, 0)
    registry.load_weights(sha256=version.sha256, base_model_id=MODEL)
    assert (registry.counters.blob_reads, registry.counters.hot_copy_hits) == (1, 1)


def test_a_damaged_hot_copy_is_dropped_and_read_again(registry: AdapterRegistry) -> None:
    ada = new_user(registry, "ada")
    version = registry.register_candidate(lora(registry), kind=AdapterKind.SPECIALIST, user_id=ada)
    assert version.sha256 is not None
    good = registry.weights_bytes(version.sha256)
    registry.cache.set(HOT_COPY_PREFIX + version.sha256, good[:-1] + b"\x00")
    assert registry.weights_bytes(version.sha256) == good
    assert registry.counters.hot_copies_dropped == 1
    assert registry.cache.get(HOT_COPY_PREFIX + version.sha256) == good


def test_promotion_and_rollback_swap_the_active_version(registry: AdapterRegistry) -> None:
    ada = new_user(registry, "ada")
    v1 = registry.register_candidate(lora(registry, 1), kind=AdapterKind.SPECIALIST, user_id=ada)
    v2 = registry.register_candidate(lora(registry, 2), kind=AdapterKind.SPECIALIST, user_id=ada)
    assert v1.adapter_id == v2.adapter_id and v2.version == 2

    with registry.cache.subscribe(INVALIDATION_CHANNEL) as events:
        registry.promote(version_id=v1.id, by=Decider.GATE)
        promoted = registry.promote(
            version_id=v2.id, by=Decider.ADMIN, expected_active_version_id=v1.id
        )
        assert promoted.state is AdapterState.ACTIVE and promoted.replaced_version_id == v1.id
        assert promoted.promoted_by == "admin"
        restored = registry.rollback(adapter_id=v1.adapter_id, by=Decider.USER, user_id=ada)
        assert restored.id == v1.id and restored.state is AdapterState.ACTIVE
        assert (restored.promoted_by, restored.retired_by) == ("user", None)
        received = [events.get(timeout=2) for _ in range(3)]
    assert [InvalidationEvent.from_bytes(m).active_version_id for m in received if m] == [
        v1.id,
        v2.id,
        v1.id,
    ]
    with registry.database.session() as session:
        adapters = AdapterRepository(session)
        versions = adapters.list_versions(adapter_id=v1.adapter_id)
        states = {v.id: (v.state, v.retired_by) for v in versions}
    # Each decision names who took it: the rollback retired v2 on the user's word.
    assert states == {v1.id: (AdapterState.ACTIVE, None), v2.id: (AdapterState.RETIRED, "user")}
    with pytest.raises(InvalidTransition, match="replaced no earlier version"):
        registry.rollback(adapter_id=v1.adapter_id, by=Decider.USER, user_id=ada)


def test_wrong_promotions_are_refused_and_change_nothing(registry: AdapterRegistry) -> None:
    ada, bob = new_user(registry, "ada"), new_user(registry, "bob")
    v1 = registry.register_candidate(lora(registry, 1), kind=AdapterKind.SPECIALIST, user_id=ada)
    v2 = registry.register_candidate(lora(registry, 2), kind=AdapterKind.SPECIALIST, user_id=ada)
    registry.promote(version_id=v1.id, by=Decider.ADMIN)
    with pytest.raises(InvalidTransition, match="only a candidate"):
        registry.promote(version_id=v1.id, by=Decider.ADMIN)
    with pytest.raises(AdapterNotFound):
        registry.promote(version_id=v2.id, by=Decider.USER, user_id=bob)
    with pytest.raises(AdapterNotFound):
        registry.rollback(adapter_id=v2.adapter_id, by=Decider.USER, user_id=bob)
    with pytest.raises(InvalidTransition, match="active version"):
        registry.promote(version_id=v2.id, by=Decider.ADMIN, expected_active_version_id=None)
    with pytest.raises(AdapterNotFound):
        registry.promote(version_id="adv_missing", by=Decider.ADMIN)
    assert v2.sha256 is not None
    registry.blobs.delete(v2.sha256)
    with pytest.raises(InvalidTransition, match=r"weights .* missing"):
        registry.promote(version_id=v2.id, by=Decider.ADMIN)
    set_ = registry.expert_set(base_model_id=MODEL, user_id=ada)
    assert set_.specialist is not None and set_.specialist.version_id == v1.id


def test_racing_promotions_leave_exactly_one_active(registry: AdapterRegistry) -> None:
    ada = new_user(registry, "ada")
    candidates = [
        registry.register_candidate(lora(registry, s), kind=AdapterKind.SPECIALIST, user_id=ada)
        for s in range(4)
    ]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(candidates))

    def promote(version_id: str) -> None:
        barrier.wait()
        try:
            registry.promote(
                version_id=version_id, by=Decider.ADMIN, expected_active_version_id=None
            )
            outcomes.append("won")
        except InvalidTransition:
            outcomes.append("lost")

    threads = [threading.Thread(target=promote, args=(c.id,)) for c in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    with registry.database.session() as session:
        versions = AdapterRepository(session).list_versions(adapter_id=candidates[0].adapter_id)
    assert [v.state for v in versions].count(AdapterState.ACTIVE) == 1


def test_invalid_weights_register_nothing(registry: AdapterRegistry) -> None:
    ada = new_user(registry, "ada")
    too_big = lora(registry, rank=32)
    with pytest.raises(InvalidAdapter, match="rank"):
        registry.register_candidate(too_big, kind=AdapterKind.SPECIALIST, user_id=ada)
    bad = lora(registry)
    name = next(iter(bad.tensors))
    bad.tensors[name][0, 0] = float("nan")
    with pytest.raises(InvalidAdapter, match=r"finite|NaN"):
        registry.register_candidate(bad, kind=AdapterKind.SPECIALIST, user_id=ada)
    with pytest.raises(InvalidAdapter, match="unknown base model"):
        registry.import_peft(
            base_model_id="no-such-model",
            kind=AdapterKind.SPECIALIST,
            user_id=ada,
            config_json=b"{}",
            weights=b"",
        )
    with registry.database.session() as session:
        assert AdapterRepository(session).list_visible_to(user_id=ada) == []
    assert not any(path.is_file() for path in registry.blobs.root.rglob("*"))


def test_peft_uploads_register_as_candidates(registry: AdapterRegistry, tmp_path: Path) -> None:
    from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir

    ada = new_user(registry, "ada")
    export_peft_dir(lora(registry, 7), tmp_path / "peft")
    version = registry.import_peft(
        base_model_id=MODEL,
        kind=AdapterKind.SPECIALIST,
        user_id=ada,
        config_json=(tmp_path / "peft" / ADAPTER_CONFIG).read_bytes(),
        weights=(tmp_path / "peft" / ADAPTER_WEIGHTS).read_bytes(),
    )
    assert version.state is AdapterState.CANDIDATE and version.rank == 4


def test_expert_sets_hold_generalists_and_only_the_users_specialist(
    registry: AdapterRegistry,
) -> None:
    ada, bob = new_user(registry, "ada"), new_user(registry, "bob")
    general = registry.register_candidate(
        lora(registry, 1), kind=AdapterKind.GENERALIST, user_id=None
    )
    mine = registry.register_candidate(lora(registry, 2), kind=AdapterKind.SPECIALIST, user_id=ada)
    theirs = registry.register_candidate(
        lora(registry, 3), kind=AdapterKind.SPECIALIST, user_id=bob
    )
    for version in (general, mine, theirs):
        registry.promote(version_id=version.id, by=Decider.ADMIN)

    expert_set = registry.expert_set(base_model_id=MODEL, user_id=ada)
    assert [e.version_id for e in expert_set.experts] == [general.id, mine.id]
    assert expert_set.key == f"{MODEL}:{general.id}+{mine.id}"
    assert registry.expert_set(base_model_id=MODEL, user_id=ada, personalize=False).is_empty
    other = registry.expert_set(base_model_id=MODEL, user_id=bob)
    assert other.specialist is not None and other.specialist.version_id == theirs.id
    registry.retire(version_id=mine.id, by=Decider.USER, user_id=ada)
    assert registry.expert_set(base_model_id=MODEL, user_id=ada).specialist is None


def test_weights_load_from_the_blob_store_while_the_cache_is_down(tmp_path: Path) -> None:
    """Redis is only a copy: an outage slows loads down, never fails them."""
    database_url = f"sqlite:///{tmp_path / 'tailor.db'}"
    with registry_on(database_url, tmp_path, REDIS_URL) as registry:
        ada = new_user(registry, "ada")
        version = registry.register_candidate(
            lora(registry), kind=AdapterKind.SPECIALIST, user_id=ada
        )
        assert version.sha256 is not None
        expected = registry.blobs.get(version.sha256)
        # The same registry, its cache now a Redis that nothing listens on.
        registry.cache.close()
        registry.cache = open_cache(UNREACHABLE_REDIS_URL, prefix="tailor-test-down:")
        try:
            assert registry.weights_bytes(version.sha256) == expected
            loaded = registry.load_weights(sha256=version.sha256, base_model_id=MODEL)
        finally:
            registry.cache.close()
    assert loaded.tensors.keys() == lora(registry).tensors.keys()
    assert registry.counters.blob_reads == 2
    assert registry.counters.cache_unavailable == 4  # two reads, two writes skipped

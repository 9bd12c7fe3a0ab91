"""The tiered adapter cache of one model replica.

Tiers, fastest first:
1. device slots: a fixed pool (``MultiLoraModel``) the forward pass reads;
2. a CPU LRU of decoded weights, bounded in bytes;
3. the shared cache (Redis or in-process) and 4. the blob store, both behind
   the registry's ``load_weights`` (hot copies verified by sha256).

A request *leases* the slots of its expert set for as long as it runs: a
leased slot is never evicted, so a running request never sees its weights
change. Eviction is least-recently-used among unleased slots. Versions never
change their weights, so slots are keyed by version id; an invalidation event
(a promotion or rollback) frees the slots of versions that are no longer
active as soon as no request holds them.

Device side (``adapters.device``): no SQL. Tiers 3 and 4 are reached only through
the ``fetch`` callable the replica passes in, and the cache knows experts and
events by their SQL-free types (``adapters.expert_sets``,
``adapters.invalidation_event``), never through the registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from adapters.errors import AdapterError, SlotsExhausted
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.invalidation_event import InvalidationEvent
from adapters.lora_weights import LoraWeights

logger = logging.getLogger(__name__)


class SlotTarget(Protocol):
    """The device pool a cache fills (``MultiLoraModel`` is one)."""

    @property
    def num_slots(self) -> int: ...

    @property
    def max_experts(self) -> int: ...

    def load(self, slot: int, weights: LoraWeights) -> object: ...

    def clear(self, slot: int) -> None: ...


@dataclass
class SlotCacheStats:
    """Counters for /metrics; ``loads`` went to the registry (shared cache or blobs)."""

    slot_hits: int = 0
    cpu_hits: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    evictions: int = 0
    invalidated: int = 0


@dataclass
class _Resident:
    ref: ExpertRef
    gate_experts: tuple[str, ...]
    has_gate: bool
    leases: int = 0
    stale: bool = False


@dataclass(frozen=True)
class SlotLease:
    """The slots one request's rows use, held until ``release``.

    ``expert_slots`` has ``max_experts`` positions (0 = empty) in gate order;
    ``gate_slot`` is the slot whose gate mixes them, 0 for a plain sum.
    """

    expert_slots: tuple[int, ...]
    gate_slot: int
    _cache: AdapterSlotCache = field(repr=False, compare=False)
    _held: tuple[int, ...] = field(repr=False, compare=False)

    def release(self) -> None:
        self._cache._release(self._held)

    def __enter__(self) -> SlotLease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class AdapterSlotCache:
    def __init__(
        self,
        target: SlotTarget,
        *,
        fetch: Callable[[ExpertRef], LoraWeights],
        cpu_cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if target.num_slots < 2:
            raise ValueError("a slot pool needs slot 0 (empty) and at least one more")
        self._target = target
        self._fetch = fetch
        self._cpu_cache_bytes = cpu_cache_bytes
        self._cpu: OrderedDict[str, LoraWeights] = OrderedDict()
        self._cpu_bytes = 0
        # slot -> resident expert; ordered from least to most recently used.
        self._slots: OrderedDict[int, _Resident] = OrderedDict()
        self._by_version: dict[str, int] = {}
        self._free = list(range(target.num_slots - 1, 0, -1))  # slot 0 stays empty
        self._lock = threading.Lock()
        self.stats = SlotCacheStats()

    # Leasing ----------------------------------------------------------------

    def acquire(self, experts: ExpertSet) -> SlotLease:
        """Slots holding every expert of the set, loading what is missing.

        Raises ``SlotsExhausted`` when the pool is full of leased slots (the
        caller retries once requests finish) and leaves nothing leased.
        """
        refs = experts.experts
        width = self._target.max_experts
        if len(refs) > width:
            raise AdapterError(
                f"{len(refs)} experts for {experts.base_model_id}, "
                f"but the pool mixes at most {width}"
            )
        held: list[int] = []
        with self._lock:
            try:
                for ref in refs:
                    held.append(self._lease_slot(ref))
            except BaseException:
                self._release_locked(held)
                raise
            gate_slot = 0
            if experts.specialist is not None:
                specialist = self._slots[held[-1]]
                # The gate scores a fixed list of generalists: it only applies
                # when the active generalists are exactly those.
                generalist_ids = tuple(g.adapter_id for g in experts.generalists)
                if specialist.has_gate and specialist.gate_experts == generalist_ids:
                    gate_slot = held[-1]
        padded = tuple(held) + (0,) * (width - len(held))
        return SlotLease(expert_slots=padded, gate_slot=gate_slot, _cache=self, _held=tuple(held))

    def _lease_slot(self, ref: ExpertRef) -> int:
        slot = self._by_version.get(ref.version_id)
        if slot is not None and not self._slots[slot].stale:
            self.stats.slot_hits += 1
            self._slots.move_to_end(slot)
            self._slots[slot].leases += 1
            return slot
        # A slot first: with none to be had, fetching the weights is wasted.
        slot = self._free_slot()
        try:
            weights = self._weights(ref)
            self._target.load(slot, weights)
        except BaseException:
            self._target.clear(slot)
            self._free.append(slot)
            raise
        self._slots[slot] = _Resident(
            ref=ref, gate_experts=weights.gate_experts, has_gate=weights.has_gate, leases=1
        )
        self._by_version[ref.version_id] = slot
        return slot

    def _weights(self, ref: ExpertRef) -> LoraWeights:
        weights = self._cpu.get(ref.version_id)
        if weights is not None:
            self.stats.cpu_hits += 1
            self._cpu.move_to_end(ref.version_id)
            return weights
        started = time.perf_counter()
        weights = self._fetch(ref)
        self.stats.loads += 1
        self.stats.load_seconds += time.perf_counter() - started
        self._remember(ref.version_id, weights)
        return weights

    def _remember(self, version_id: str, weights: LoraWeights) -> None:
        size = sum(t.numel() * t.element_size() for t in weights.tensors.values())
        if size > self._cpu_cache_bytes:
            return
        self._cpu[version_id] = weights
        self._cpu_bytes += size
        while self._cpu_bytes > self._cpu_cache_bytes:
            _, dropped = self._cpu.popitem(last=False)
            self._cpu_bytes -= sum(t.numel() * t.element_size() for t in dropped.tensors.values())

    def _free_slot(self) -> int:
        if self._free:
            return self._free.pop()
        for slot, resident in self._slots.items():  # least recently used first
            if resident.leases == 0:
                self._evict(slot)
                self.stats.evictions += 1
                return self._free.pop()
        raise SlotsExhausted(
            f"all {self._target.num_slots - 1} adapter slots are in use by running requests"
        )

    def _evict(self, slot: int) -> None:
        resident = self._slots.pop(slot)
        if self._by_version.get(resident.ref.version_id) == slot:
            del self._by_version[resident.ref.version_id]
        self._target.clear(slot)
        self._free.append(slot)

    def _release(self, held: tuple[int, ...]) -> None:
        with self._lock:
            self._release_locked(held)

    def _release_locked(self, held: list[int] | tuple[int, ...]) -> None:
        for slot in held:
            resident = self._slots[slot]
            resident.leases -= 1
            if resident.leases == 0 and resident.stale:
                self._evict(slot)

    # Invalidation -------------------------------------------------------------

    def invalidate(self, event: InvalidationEvent | None) -> None:
        """Free the slots of the expert's versions that are no longer active.

        ``None`` (events may have been missed) needs nothing here: a slot
        holds one immutable version, so it is never wrong, only unused, and
        LRU reclaims it. What must be dropped then is ``CachedExpertSets``.
        """
        if event is None:
            return
        with self._lock:
            for slot, resident in list(self._slots.items()):
                ref = resident.ref
                if ref.adapter_id != event.adapter_id or ref.version_id == event.active_version_id:
                    continue
                self.stats.invalidated += 1
                if resident.leases == 0:
                    self._evict(slot)
                else:
                    # In use: freed when the last request using it finishes;
                    # meanwhile no new request gets it.
                    resident.stale = True
                    self._by_version.pop(ref.version_id, None)

    # Introspection ----------------------------------------------------------------

    def resident_versions(self) -> dict[str, int]:
        """Version id -> slot of every expert loaded and not stale."""
        with self._lock:
            return dict(self._by_version)

    def leased_slots(self) -> int:
        with self._lock:
            return sum(1 for r in self._slots.values() if r.leases > 0)

"""Which experts answer a user's request on a base model, as plain values.

CoMiGS: every active generalist of the base model, plus the user's active
specialist (whose version may carry the gate that mixes them). The catalog
resolves a set from SQL (``adapters.registry.resolve_expert_set``); a set is
immutable: versions never change their weights, so a resolved set can be
cached (``CachedExpertSets``) until an invalidation event says otherwise.

Invariant: SQL-free. These types are what the catalog hands to serving and to
the device side (``adapters.device.slot_cache`` leases slots for an
``ExpertSet``), so this module imports neither SQLAlchemy nor ``storage``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertRef:
    """One active expert version: enough to fetch and identify its weights."""

    adapter_id: str
    version_id: str
    version: int
    # A ``storage.tables.AdapterKind`` ("specialist" or "generalist"): that enum is a
    # ``StrEnum`` of the SQL schema, so here it is typed by its values, SQL-free.
    kind: str
    sha256: str
    base_model_id: str
    # What the evaluation gate measured against the base model, for the router: the NLL
    # gain relative to the base's NLL, and whether its interval lay above zero.
    relative_gain: float | None = None
    gain_significant: bool = False


@dataclass(frozen=True)
class ExpertSet:
    """The experts of one request, in gate order: generalists, then the specialist."""

    base_model_id: str
    generalists: tuple[ExpertRef, ...] = ()
    specialist: ExpertRef | None = None

    @property
    def experts(self) -> tuple[ExpertRef, ...]:
        return self.generalists + ((self.specialist,) if self.specialist else ())

    @property
    def is_empty(self) -> bool:
        return not self.experts

    @property
    def key(self) -> str:
        """Names the set, e.g. for routing requests to replicas that hold it."""
        if self.is_empty:
            return f"{self.base_model_id}:base"
        return f"{self.base_model_id}:" + "+".join(e.version_id for e in self.experts)

    def describe(self) -> list[dict[str, object]]:
        """What a response reports as the experts it used."""
        return [
            {
                "id": e.adapter_id,
                "kind": str(e.kind),
                "version": e.version,
                "version_id": e.version_id,
            }
            for e in self.experts
        ]


class _TimedSets:
    """Expert sets by key, each kept ``ttl_seconds`` at most; thread-safe."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, ExpertSet]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, resolve: Callable[[], ExpertSet | None]) -> ExpertSet | None:
        """The kept set of ``key``, else ``resolve()``'s, kept unless it is None."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
        resolved = resolve()
        if resolved is not None:
            with self._lock:
                self._entries[key] = (now + self._ttl, resolved)
        return resolved

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class CachedExpertSets:
    """A replica's memory of resolved expert sets, so a request costs no SQL read.

    Entries live ``ttl_seconds`` at most (bounding staleness should an
    invalidation event be missed) and are all dropped on any invalidation.
    """

    def __init__(
        self,
        resolve: Callable[[str, str | None, bool], ExpertSet],
        *,
        ttl_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._sets = _TimedSets(ttl_seconds, clock)

    def get(
        self, *, base_model_id: str, user_id: str | None, personalize: bool = True
    ) -> ExpertSet:
        found = self._sets.get(
            (base_model_id, user_id, personalize),
            lambda: self._resolve(base_model_id, user_id, personalize),
        )
        assert found is not None  # resolve always gives a set (maybe empty)
        return found

    def clear(self, _event: object = None) -> None:
        """Forget every resolved set (usable directly as an invalidation handler)."""
        self._sets.clear()


class CachedPinnedSets:
    """A replica's memory of the expert sets that fine-tuned model ids pin
    (``adapters.fine_tuned_models``), kept as ``CachedExpertSets`` keeps its sets.

    Only ids that name a model are remembered: an unknown id is asked again, so that
    made-up ids cannot fill the memory and a model promoted a moment ago is found.
    """

    def __init__(
        self,
        resolve: Callable[[str, str], ExpertSet | None],
        *,
        ttl_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._sets = _TimedSets(ttl_seconds, clock)

    def get(self, *, model_id: str, user_id: str) -> ExpertSet | None:
        return self._sets.get((model_id, user_id), lambda: self._resolve(model_id, user_id))

    def clear(self, _event: object = None) -> None:
        """Forget every pinned set (usable directly as an invalidation handler)."""
        self._sets.clear()

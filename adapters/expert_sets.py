"""Which experts answer a user's request on a base model.

CoMiGS: every active generalist of the base model, plus the user's active
specialist (whose version may carry the gate that mixes them). The set is
resolved from SQL and is immutable: versions never change their weights, so
a resolved set can be cached until an invalidation event says otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.tables import Adapter, AdapterKind, AdapterState, AdapterVersion


@dataclass(frozen=True)
class ExpertRef:
    """One active expert version: enough to fetch and identify its weights."""

    adapter_id: str
    version_id: str
    version: int
    kind: AdapterKind
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
                "kind": e.kind.value,
                "version": e.version,
                "version_id": e.version_id,
            }
            for e in self.experts
        ]


def resolve_expert_set(
    session: Session, *, base_model_id: str, user_id: str | None, personalize: bool = True
) -> ExpertSet:
    """The active experts for ``user_id`` on ``base_model_id`` (generalists only for None)."""
    if not personalize:
        return ExpertSet(base_model_id=base_model_id)
    query = (
        select(Adapter, AdapterVersion)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .where(
            Adapter.base_model_id == base_model_id,
            AdapterVersion.state == AdapterState.ACTIVE,
            (Adapter.kind == AdapterKind.GENERALIST)
            | ((Adapter.kind == AdapterKind.SPECIALIST) & (Adapter.user_id == user_id)),
        )
        .order_by(Adapter.kind, Adapter.created_at, Adapter.id)
    )
    generalists: list[ExpertRef] = []
    specialist: ExpertRef | None = None
    for adapter, version in session.execute(query):
        assert version.sha256 is not None  # an active version always has weights
        ref = ExpertRef(
            adapter_id=adapter.id,
            version_id=version.id,
            version=version.version,
            kind=adapter.kind,
            sha256=version.sha256,
            base_model_id=base_model_id,
            **_measured_gain(version.eval_metrics),
        )
        if adapter.kind is AdapterKind.GENERALIST:
            generalists.append(ref)
        elif specialist is None or adapter.name == "default":
            # A user has one specialist per base model today; "default" wins
            # should more named specialists exist.
            specialist = ref
    return ExpertSet(
        base_model_id=base_model_id, generalists=tuple(generalists), specialist=specialist
    )


def _measured_gain(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The gate's figures as the router reads them (finetune/evaluation.py writes them)."""
    try:
        gain = (metrics or {})["gain_vs_base"]
        base_nll = float((metrics or {})["nll_per_token"]["base"])
        relative = float(gain["gain"]) / base_nll if base_nll > 0 else None
        return {"relative_gain": relative, "gain_significant": bool(gain.get("significant"))}
    except (KeyError, TypeError, ValueError):
        # Uploaded or manually promoted versions carry no evaluation.
        return {}


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
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[tuple[str, str | None, bool], tuple[float, ExpertSet]] = {}
        self._lock = threading.Lock()

    def get(
        self, *, base_model_id: str, user_id: str | None, personalize: bool = True
    ) -> ExpertSet:
        key = (base_model_id, user_id, personalize)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return entry[1]
        resolved = self._resolve(base_model_id, user_id, personalize)
        with self._lock:
            self._entries[key] = (now + self._ttl, resolved)
        return resolved

    def clear(self, _event: object = None) -> None:
        """Forget every resolved set (usable directly as an invalidation handler)."""
        with self._lock:
            self._entries.clear()

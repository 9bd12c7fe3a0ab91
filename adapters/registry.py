"""The adapter registry: experts, their versions, their weights, their lifecycle.

Truth lives in SQL (rows) and the blob store (weights, by sha256); the cache
holds hot copies of the weights. A version's weights are written to the blob
store before its row exists, so a row never points at weights that do not.

Lifecycle: a new version is a ``candidate``; ``promote`` makes it ``active``
and retires the one it replaces, in one transaction that compare-and-sets the
active version; ``rollback`` swaps back to the replaced version the same way.
After each change an invalidation event (``adapters.invalidation_event``) tells
every replica to drop what it resolved or loaded for that expert.

``resolve_expert_set`` is the one query for which active versions answer a
user's requests on a base model; it returns the SQL-free ``ExpertSet`` that
serving and the device side (``adapters.device``) work with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.errors import AdapterNotFound, InvalidAdapter, InvalidTransition
from adapters.expert_sets import ExpertRef, ExpertSet
from adapters.file_format import deserialize, serialize
from adapters.invalidation_event import INVALIDATION_CHANNEL, InvalidationEvent
from adapters.lora_weights import LoraWeights
from adapters.peft_interop import import_peft_files
from adapters.validation import BaseModelSpec, ValidationLimits
from storage.blobs import DirectoryBlobStore, sha256_of
from storage.cache import Cache
from storage.clock import utc_now
from storage.database import Database
from storage.errors import BackendUnavailable, Conflict, NotFound
from storage.repositories import AdapterRepository, BaseModelRepository
from storage.tables import Adapter, AdapterKind, AdapterState, AdapterVersion, Decider

HOT_COPY_PREFIX = "adapter-weights:"


@dataclass
class WeightCounters:
    """Where weights came from; read by /metrics."""

    hot_copy_hits: int = 0
    hot_copy_misses: int = 0
    hot_copies_dropped: int = 0  # a cached copy that no longer hashed to its name
    blob_reads: int = 0
    cache_unavailable: int = 0  # hot-copy reads or writes skipped: the cache was down


@dataclass
class AdapterRegistry:
    database: Database
    blobs: DirectoryBlobStore
    cache: Cache
    model_store_dir: Path
    limits: ValidationLimits = field(default_factory=ValidationLimits)
    hot_copy_ttl_seconds: float = 3600.0
    counters: WeightCounters = field(default_factory=WeightCounters)
    _specs: dict[str, BaseModelSpec] = field(default_factory=dict, repr=False)

    # Base models ------------------------------------------------------------

    def base_spec(self, base_model_id: str) -> BaseModelSpec:
        """What an adapter for ``base_model_id`` must fit (read once, then kept)."""
        spec = self._specs.get(base_model_id)
        if spec is None:
            with self.database.session() as session:
                try:
                    model = BaseModelRepository(session).get(model_id=base_model_id)
                except NotFound:
                    raise InvalidAdapter(f"unknown base model {base_model_id!r}") from None
            spec = BaseModelSpec.from_model_dir(
                model.id, model.sha256, self.model_store_dir / model.path
            )
            self._specs[base_model_id] = spec
        return spec

    # Registration -------------------------------------------------------------

    def register_candidate(
        self,
        weights: LoraWeights,
        *,
        kind: AdapterKind,
        user_id: str | None,
        name: str = "default",
        eval_metrics: dict[str, Any] | None = None,
        parent_version_id: str | None = None,
        job_id: str | None = None,
        before_commit: Callable[[Session], None] | None = None,
    ) -> AdapterVersion:
        """Store validated weights as the next candidate version of the expert.

        The expert is created on first use. The stored bytes are validated
        again as they will be read, so what is registered is what loads.
        ``before_commit`` runs inside the transaction that adds the version: a
        fine-tune worker checks there that it still owns its job, so the
        version and the job's result commit together or not at all.
        """
        base = self.base_spec(weights.base_model_id)
        data = serialize(weights, base_model_sha256=base.sha256)
        deserialize(data, base=base, limits=self.limits)
        sha256 = self.blobs.put(data)
        with self.database.session() as session:
            adapters = AdapterRepository(session)
            expert = self._find_or_create_adapter(
                adapters, kind=kind, base_model_id=base.id, user_id=user_id, name=name
            )
            version = adapters.add_version(
                adapter_id=expert.id,
                rank=weights.rank,
                alpha=weights.alpha,
                target_modules=weights.target_modules,
                sha256=sha256,
                size_bytes=len(data),
                eval_metrics=eval_metrics,
                parent_version_id=parent_version_id,
                job_id=job_id,
            )
            if before_commit is not None:
                before_commit(session)
            return version

    def import_peft(
        self,
        *,
        base_model_id: str,
        kind: AdapterKind,
        user_id: str | None,
        config_json: bytes,
        weights: bytes,
        gate: bytes | None = None,
        name: str = "default",
    ) -> AdapterVersion:
        """Validate an uploaded PEFT adapter and register it as a candidate."""
        lora = import_peft_files(
            config_json, weights, base=self.base_spec(base_model_id), limits=self.limits, gate=gate
        )
        return self.register_candidate(lora, kind=kind, user_id=user_id, name=name)

    @staticmethod
    def _find_or_create_adapter(
        adapters: AdapterRepository,
        *,
        kind: AdapterKind,
        base_model_id: str,
        user_id: str | None,
        name: str,
    ) -> Adapter:
        found = adapters.find_adapter(
            kind=kind, base_model_id=base_model_id, user_id=user_id, name=name
        )
        if found is not None:
            return found
        try:
            return adapters.create_adapter(
                kind=kind, base_model_id=base_model_id, user_id=user_id, name=name
            )
        except Conflict:
            # Created concurrently by another request: use that one.
            found = adapters.find_adapter(
                kind=kind, base_model_id=base_model_id, user_id=user_id, name=name
            )
            assert found is not None
            return found

    # Lifecycle ------------------------------------------------------------------

    def promote(
        self,
        *,
        version_id: str,
        by: Decider,
        user_id: str | None = None,
        expected_active_version_id: str | object | None = ...,
    ) -> AdapterVersion:
        """Make a candidate the active version of its expert, atomically.

        ``by`` is recorded on both versions (who promoted, who retired the one
        replaced). ``user_id`` limits the call to that user's own specialists
        (None: an admin, any expert). ``expected_active_version_id``, when
        given, must be the active version at the moment of the swap
        (compare-and-set).
        """
        with self.database.session() as session:
            version = self._version_for(session, version_id=version_id, user_id=user_id)
            if version.state is not AdapterState.CANDIDATE:
                raise InvalidTransition(
                    f"version {version.version} of {version.adapter_id} is {version.state.value}; "
                    "only a candidate can be promoted"
                )
            current = AdapterRepository(session).active_version(adapter_id=version.adapter_id)
            current_id = current.id if current else None
            if expected_active_version_id is not ... and expected_active_version_id != current_id:
                raise InvalidTransition(
                    f"the active version of {version.adapter_id} is {current_id}, "
                    f"not {expected_active_version_id}"
                )
            self._swap(session, version=version, current=current, by=by, remember_replaced=True)
            promoted = version
        self._publish(InvalidationEvent(promoted.adapter_id, promoted.id))
        return promoted

    def rollback(
        self, *, adapter_id: str, by: Decider, user_id: str | None = None
    ) -> AdapterVersion:
        """Make the version the current one replaced active again; retire the current one."""
        with self.database.session() as session:
            adapter = self._adapter_for(session, adapter_id=adapter_id, user_id=user_id)
            current = AdapterRepository(session).active_version(adapter_id=adapter.id)
            if current is None:
                raise InvalidTransition(f"{adapter_id} has no active version to roll back")
            if current.replaced_version_id is None:
                raise InvalidTransition(
                    f"version {current.version} of {adapter_id} replaced no earlier version"
                )
            previous = AdapterRepository(session).get_version(
                version_id=current.replaced_version_id
            )
            self._swap(session, version=previous, current=current, by=by, remember_replaced=False)
            restored = previous
        self._publish(InvalidationEvent(adapter_id, restored.id))
        return restored

    def retire(self, *, version_id: str, by: Decider, user_id: str | None = None) -> AdapterVersion:
        """Take a version out of use for good (an active one leaves the expert without)."""
        with self.database.session() as session:
            version = self._version_for(session, version_id=version_id, user_id=user_id)
            if version.state is AdapterState.RETIRED:
                return version
            was_active = version.state is AdapterState.ACTIVE
            version.state = AdapterState.RETIRED
            version.retired_at = utc_now()
            version.retired_by = by.value
            retired = version
        if was_active:
            self._publish(InvalidationEvent(retired.adapter_id, None))
        return retired

    def _swap(
        self,
        session: Session,
        *,
        version: AdapterVersion,
        current: AdapterVersion | None,
        by: Decider,
        remember_replaced: bool,
    ) -> None:
        # Both updates name the state they expect: if another transaction
        # moved either version meanwhile, a count is 0 and nothing changes.
        if version.sha256 is None or not self.blobs.exists(version.sha256):
            raise InvalidTransition(f"the weights of version {version.id} are missing")
        now = utc_now()
        if current is not None:
            demoted = session.execute(
                update(AdapterVersion)
                .where(AdapterVersion.id == current.id, AdapterVersion.state == AdapterState.ACTIVE)
                .values(state=AdapterState.RETIRED, retired_at=now, retired_by=by.value)
                .execution_options(synchronize_session=False)
            )
            if demoted.rowcount != 1:  # type: ignore[attr-defined]
                raise InvalidTransition("the active version changed meanwhile; try again")
        values: dict[str, Any] = {
            "state": AdapterState.ACTIVE,
            "promoted_at": now,
            "promoted_by": by.value,
            "retired_at": None,
            "retired_by": None,
        }
        if remember_replaced:
            values["replaced_version_id"] = current.id if current else None
        try:
            promoted = session.execute(
                update(AdapterVersion)
                .where(AdapterVersion.id == version.id, AdapterVersion.state == version.state)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        except IntegrityError:
            # The one-active index: another promotion won the race.
            raise InvalidTransition("another version became active meanwhile; try again") from None
        if promoted.rowcount != 1:  # type: ignore[attr-defined]
            raise InvalidTransition(f"version {version.id} changed state meanwhile; try again")
        session.flush()
        session.expire_all()
        session.refresh(version)

    def _adapter_for(self, session: Session, *, adapter_id: str, user_id: str | None) -> Adapter:
        adapter = session.get(Adapter, adapter_id)
        # Users manage only their own specialists; another user's expert is
        # reported as missing, never as forbidden.
        if adapter is None or (user_id is not None and adapter.user_id != user_id):
            raise AdapterNotFound(f"adapter {adapter_id} not found")
        return adapter

    def _version_for(
        self, session: Session, *, version_id: str, user_id: str | None
    ) -> AdapterVersion:
        version = session.get(AdapterVersion, version_id)
        if version is None:
            raise AdapterNotFound(f"adapter version {version_id} not found")
        self._adapter_for(session, adapter_id=version.adapter_id, user_id=user_id)
        return version

    def find_version(
        self, *, target_id: str, user_id: str | None = None, prefer: AdapterState
    ) -> AdapterVersion:
        """A version named by its own id (``adv_``) or by its expert's (``adp_``).

        For an expert id, the version in state ``prefer`` (the newest one, for
        candidates) is meant: "promote this adapter" promotes its newest
        candidate, "download this adapter" gives its active version.
        """
        with self.database.session() as session:
            if session.get(AdapterVersion, target_id) is not None:
                return self._version_for(session, version_id=target_id, user_id=user_id)
            adapter = self._adapter_for(session, adapter_id=target_id, user_id=user_id)
            matching = [
                v
                for v in AdapterRepository(session).list_versions(adapter_id=adapter.id)
                if v.state is prefer
            ]
            if not matching:
                raise InvalidTransition(f"{target_id} has no {prefer.value} version")
            return matching[-1]

    def adapter_of(self, *, target_id: str, user_id: str | None = None) -> Adapter:
        """The expert named by its id, or by one of its versions' ids."""
        with self.database.session() as session:
            version = session.get(AdapterVersion, target_id)
            adapter_id = version.adapter_id if version is not None else target_id
            return self._adapter_for(session, adapter_id=adapter_id, user_id=user_id)

    def retire_adapter(
        self, *, adapter_id: str, by: Decider, user_id: str | None = None
    ) -> list[AdapterVersion]:
        """Retire every version of an adapter that is still in use or in waiting."""
        with self.database.session() as session:
            self._adapter_for(session, adapter_id=adapter_id, user_id=user_id)
            versions = AdapterRepository(session).list_versions(adapter_id=adapter_id)
        retired = [
            self.retire(version_id=v.id, by=by, user_id=user_id)
            for v in versions
            if v.state in (AdapterState.CANDIDATE, AdapterState.ACTIVE)
        ]
        return retired

    def _publish(self, event: InvalidationEvent) -> None:
        self.cache.publish(INVALIDATION_CHANNEL, event.to_bytes())

    # Reading ----------------------------------------------------------------------

    def expert_set(
        self, *, base_model_id: str, user_id: str | None, personalize: bool = True
    ) -> ExpertSet:
        with self.database.session() as session:
            return resolve_expert_set(
                session, base_model_id=base_model_id, user_id=user_id, personalize=personalize
            )

    def weights_bytes(self, sha256: str) -> bytes:
        """A version's file: the hot copy if it is intact, else the blob store.

        The blob store is the source of truth and the cache only a copy, so a
        cache outage slows loads down but never fails them.
        """
        key = HOT_COPY_PREFIX + sha256
        data = self._hot_copy(key)
        if data is not None:
            if sha256_of(data) == sha256:
                self.counters.hot_copy_hits += 1
                return data
            self._drop_hot_copy(key)
            self.counters.hot_copies_dropped += 1
        self.counters.hot_copy_misses += 1
        data = self.blobs.get(sha256)  # verifies the digest itself
        self.counters.blob_reads += 1
        try:
            self.cache.set(key, data, ttl_seconds=self.hot_copy_ttl_seconds)
        except BackendUnavailable:
            self.counters.cache_unavailable += 1
        return data

    def _hot_copy(self, key: str) -> bytes | None:
        try:
            return self.cache.get(key)
        except BackendUnavailable:
            self.counters.cache_unavailable += 1
            return None

    def _drop_hot_copy(self, key: str) -> None:
        try:
            self.cache.delete(key)
        except BackendUnavailable:
            self.counters.cache_unavailable += 1

    def load_weights(self, *, sha256: str, base_model_id: str) -> LoraWeights:
        """A version's weights, validated again as they are loaded."""
        return deserialize(
            self.weights_bytes(sha256), base=self.base_spec(base_model_id), limits=self.limits
        )


# Resolving expert sets -----------------------------------------------------------------


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
        ref = expert_ref(adapter, version)
        if adapter.kind is AdapterKind.GENERALIST:
            generalists.append(ref)
        elif specialist is None or adapter.name == "default":
            # A user has one specialist per base model today; "default" wins
            # should more named specialists exist.
            specialist = ref
    return ExpertSet(
        base_model_id=base_model_id, generalists=tuple(generalists), specialist=specialist
    )


def expert_ref(adapter: Adapter, version: AdapterVersion) -> ExpertRef:
    """A version with weights as the expert a request runs with."""
    assert version.sha256 is not None  # a version that answers always has weights
    return ExpertRef(
        adapter_id=adapter.id,
        version_id=version.id,
        version=version.version,
        kind=adapter.kind,
        sha256=version.sha256,
        base_model_id=adapter.base_model_id,
        **_measured_gain(version.eval_metrics),
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

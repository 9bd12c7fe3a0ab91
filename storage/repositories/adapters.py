"""LoRA experts and their versions (the rows; weights live in the blob store)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import Conflict, NotFound
from storage.ids import new_id
from storage.tables import Adapter, AdapterKind, AdapterState, AdapterVersion

SHARED_OWNER = "shared"


class AdapterRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create_adapter(
        self,
        *,
        kind: AdapterKind,
        base_model_id: str,
        user_id: str | None = None,
        name: str = "default",
    ) -> Adapter:
        """A new adapter with no version yet. Specialists need a user; generalists have none."""
        if (kind is AdapterKind.SPECIALIST) != (user_id is not None):
            raise ValueError("a specialist belongs to one user; a generalist to none")
        adapter = Adapter(
            id=new_id("adp"),
            kind=kind,
            user_id=user_id,
            owner_key=user_id or SHARED_OWNER,
            base_model_id=base_model_id,
            name=name,
            created_at=utc_now(),
        )
        try:
            with self.session.begin_nested():
                self.session.add(adapter)
        except IntegrityError:
            raise Conflict(f"{kind.value} {name!r} for {base_model_id} already exists") from None
        return adapter

    def get(self, *, adapter_id: str) -> Adapter:
        adapter = self.session.get(Adapter, adapter_id)
        if adapter is None:
            raise NotFound(f"adapter {adapter_id} not found")
        return adapter

    def get_visible_to(self, *, adapter_id: str, user_id: str) -> Adapter:
        """The adapter if this user may use it (their specialist, or a generalist)."""
        adapter = self.session.get(Adapter, adapter_id)
        if adapter is None or (adapter.user_id is not None and adapter.user_id != user_id):
            raise NotFound(f"adapter {adapter_id} not found")
        return adapter

    def find_adapter(
        self, *, kind: AdapterKind, base_model_id: str, user_id: str | None, name: str = "default"
    ) -> Adapter | None:
        query = select(Adapter).where(
            Adapter.owner_key == (user_id or SHARED_OWNER),
            Adapter.base_model_id == base_model_id,
            Adapter.kind == kind,
            Adapter.name == name,
        )
        return self.session.scalar(query)

    def list_visible_to(self, *, user_id: str, base_model_id: str | None = None) -> list[Adapter]:
        """The user's specialists and every generalist, optionally for one base model."""
        query = select(Adapter).where(
            or_(Adapter.user_id == user_id, Adapter.kind == AdapterKind.GENERALIST)
        )
        if base_model_id is not None:
            query = query.where(Adapter.base_model_id == base_model_id)
        return list(self.session.scalars(query.order_by(Adapter.created_at, Adapter.id)))

    def list_all(self, *, limit: int = 1000) -> list[Adapter]:
        query = select(Adapter).order_by(Adapter.created_at, Adapter.id).limit(limit)
        return list(self.session.scalars(query))

    def add_version(
        self,
        *,
        adapter_id: str,
        rank: int,
        alpha: float,
        target_modules: Sequence[str],
        state: AdapterState = AdapterState.CANDIDATE,
        sha256: str | None = None,
        size_bytes: int | None = None,
        eval_metrics: dict[str, Any] | None = None,
        parent_version_id: str | None = None,
        job_id: str | None = None,
    ) -> AdapterVersion:
        """Append the next version number to an expert.

        New versions never start ``active``: activation is a promotion, which
        must check and swap the current active version in one step.
        """
        if state is AdapterState.ACTIVE:
            raise ValueError("a new version cannot start active; promote it")
        if rank <= 0:
            raise ValueError("rank must be positive")
        if state is AdapterState.CANDIDATE and sha256 is None:
            raise ValueError("a candidate needs its weights (sha256)")
        self.get(adapter_id=adapter_id)
        latest = self.session.scalar(
            select(func.max(AdapterVersion.version)).where(AdapterVersion.adapter_id == adapter_id)
        )
        version = AdapterVersion(
            id=new_id("adv"),
            adapter_id=adapter_id,
            version=(latest or 0) + 1,
            state=state,
            sha256=sha256,
            size_bytes=size_bytes,
            rank=rank,
            alpha=alpha,
            target_modules=list(target_modules),
            eval_metrics=eval_metrics or {},
            parent_version_id=parent_version_id,
            job_id=job_id,
            created_at=utc_now(),
        )
        try:
            with self.session.begin_nested():
                self.session.add(version)
        except IntegrityError:
            raise Conflict(f"adapter {adapter_id} got a new version concurrently") from None
        return version

    def get_version(self, *, version_id: str) -> AdapterVersion:
        version = self.session.get(AdapterVersion, version_id)
        if version is None:
            raise NotFound(f"adapter version {version_id} not found")
        return version

    def list_versions(self, *, adapter_id: str) -> list[AdapterVersion]:
        query = (
            select(AdapterVersion)
            .where(AdapterVersion.adapter_id == adapter_id)
            .order_by(AdapterVersion.version)
        )
        return list(self.session.scalars(query))

    def active_version(self, *, adapter_id: str) -> AdapterVersion | None:
        query = select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter_id,
            AdapterVersion.state == AdapterState.ACTIVE,
        )
        return self.session.scalar(query)

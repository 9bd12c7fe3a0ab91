"""A user's specialist versions as model names, the way OpenAI names fine-tuned models.

``ft:<base model>:<suffix>:<version id>``: the suffix is the one the job that
trained the version was given (``POST /v1/fine_tuning/jobs``), else ``tailor``.
Naming such a model in a completion runs that base model with exactly that
version as the specialist (beside the base model's active generalists), with no
routing; ``auto`` and a base model's id keep resolving the user's active experts.

Which versions are models (``callable``): those the user has been served, that is
promoted at some time (by the gate, the user or an admin) and not failed, while
they are active, and after a later promotion or rollback retired them; a version
an admin retired (directly, or by promoting another over it) is withdrawn. A
candidate the gate held back is no model until someone promotes it.

Invariants: an id resolves only for the user who owns the version (another
user's id is as unknown as a made-up one); an id resolves only in its one
canonical spelling (base, suffix and version must all match); the set of
experts a resolved id runs with is an ordinary ``ExpertSet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from adapters.expert_sets import ExpertSet
from adapters.registry import expert_ref, resolve_expert_set
from storage.tables import (
    Adapter,
    AdapterKind,
    AdapterState,
    AdapterVersion,
    Decider,
    FineTuneJob,
)

PREFIX = "ft"
# The suffix of a version no job named (an upload, a job of /v1/fine-tunes).
DEFAULT_SUFFIX = "tailor"


@dataclass(frozen=True)
class FineTunedModel:
    id: str
    base_model_id: str
    adapter_id: str
    version_id: str
    version: int
    suffix: str
    # When it was first served: the promotion that made it a model.
    created_at: datetime


def model_id(base_model_id: str, suffix: str | None, version_id: str) -> str:
    return f"{PREFIX}:{base_model_id}:{suffix or DEFAULT_SUFFIX}:{version_id}"


def looks_fine_tuned(name: str) -> bool:
    """Whether ``name`` is spelt as a fine-tuned model id (it may still name none)."""
    return name.startswith(f"{PREFIX}:")


def callable_version(version: AdapterVersion) -> bool:
    """Whether the version answers as a model of its own (the module's rule)."""
    if version.sha256 is None or version.promoted_at is None:
        return False
    if version.state is AdapterState.ACTIVE:
        return True
    return version.state is AdapterState.RETIRED and version.retired_by != Decider.ADMIN.value


def _query(user_id: str) -> Select[Adapter, AdapterVersion, str | None]:
    return (
        select(Adapter, AdapterVersion, FineTuneJob.suffix)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .outerjoin(FineTuneJob, FineTuneJob.id == AdapterVersion.job_id)
        .where(
            Adapter.kind == AdapterKind.SPECIALIST,
            Adapter.user_id == user_id,
            AdapterVersion.promoted_at.is_not(None),
        )
    )


def _model(adapter: Adapter, version: AdapterVersion, suffix: str | None) -> FineTunedModel:
    assert version.promoted_at is not None
    return FineTunedModel(
        id=model_id(adapter.base_model_id, suffix, version.id),
        base_model_id=adapter.base_model_id,
        adapter_id=adapter.id,
        version_id=version.id,
        version=version.version,
        suffix=suffix or DEFAULT_SUFFIX,
        created_at=version.promoted_at,
    )


def fine_tuned_models(session: Session, *, user_id: str) -> list[FineTunedModel]:
    """The user's fine-tuned models, oldest promotion first."""
    rows = session.execute(_query(user_id).order_by(AdapterVersion.promoted_at, AdapterVersion.id))
    return [
        _model(adapter, version, suffix)
        for adapter, version, suffix in rows
        if callable_version(version)
    ]


def find_fine_tuned_model(session: Session, *, name: str, user_id: str) -> FineTunedModel | None:
    """The user's fine-tuned model of that exact id, or None."""
    if not looks_fine_tuned(name):
        return None
    parts = name.split(":")
    if len(parts) < 4:
        return None
    version_id = parts[-1]
    row = session.execute(_query(user_id).where(AdapterVersion.id == version_id)).first()
    if row is None:
        return None
    adapter, version, suffix = row
    if not callable_version(version):
        return None
    model = _model(adapter, version, suffix)
    return model if model.id == name else None


def models_of_versions(
    session: Session, *, user_id: str, version_ids: Sequence[str]
) -> dict[str, str]:
    """Version id -> fine-tuned model id, for those of ``version_ids`` that are models."""
    if not version_ids:
        return {}
    rows = session.execute(_query(user_id).where(AdapterVersion.id.in_(list(version_ids))))
    return {
        version.id: _model(adapter, version, suffix).id
        for adapter, version, suffix in rows
        if callable_version(version)
    }


def pinned_expert_set(session: Session, model: FineTunedModel) -> ExpertSet:
    """What a request naming ``model`` runs with: the base model's active generalists
    and exactly that version as the specialist."""
    adapter = session.get(Adapter, model.adapter_id)
    version = session.get(AdapterVersion, model.version_id)
    assert adapter is not None and version is not None
    shared = resolve_expert_set(session, base_model_id=model.base_model_id, user_id=None)
    return ExpertSet(
        base_model_id=model.base_model_id,
        generalists=shared.generalists,
        specialist=expert_ref(adapter, version),
    )

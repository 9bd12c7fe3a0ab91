"""``/v1/adapters``: the caller's adapters (their specialists and the shared generalists),
and the caller's own decisions on their specialists: promote a candidate, roll back.

A user manages only their own specialists; a generalist or another user's adapter is a
404 here, as if it did not exist (the registry's rule). Promoting by hand overrides the
evaluation gate: the version's ``eval_metrics`` still say what the gate found.
"""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import ServicesDep, SessionDep, UserDep
from serving.schemas import AdapterPublic, AdapterVersionPublic, ListPublic
from storage.repositories import AdapterRepository
from storage.tables import AdapterState, Decider

router = APIRouter(prefix="/v1", tags=["adapters"])


@router.get("/adapters")
def list_adapters(user: UserDep, session: SessionDep) -> ListPublic[AdapterPublic]:
    assert user.user_id is not None
    adapters = AdapterRepository(session).list_visible_to(user_id=user.user_id)
    return ListPublic(data=[AdapterPublic.from_adapter(a) for a in adapters])


@router.post("/adapters/{target_id}/promote")
def promote_own(target_id: str, user: UserDep, services: ServicesDep) -> AdapterVersionPublic:
    """Make a candidate of the caller's specialist (a version id, or the adapter's id for its
    newest candidate) the one they are served."""
    assert user.user_id is not None
    registry = services.adapters
    version = registry.find_version(
        target_id=target_id, user_id=user.user_id, prefer=AdapterState.CANDIDATE
    )
    promoted = registry.promote(version_id=version.id, by=Decider.USER, user_id=user.user_id)
    return AdapterVersionPublic.model_validate(promoted)


@router.post("/adapters/{target_id}/rollback")
def rollback_own(target_id: str, user: UserDep, services: ServicesDep) -> AdapterVersionPublic:
    """Serve the caller again the version their active one replaced."""
    assert user.user_id is not None
    registry = services.adapters
    adapter = registry.adapter_of(target_id=target_id, user_id=user.user_id)
    restored = registry.rollback(adapter_id=adapter.id, by=Decider.USER, user_id=user.user_id)
    return AdapterVersionPublic.model_validate(restored)

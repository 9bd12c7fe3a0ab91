"""``GET /v1/adapters``: the caller's experts (their specialists and the shared generalists)."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import SessionDep, UserDep
from serving.schemas import AdapterPublic, ListPublic
from storage.repositories import AdapterRepository

router = APIRouter(prefix="/v1", tags=["adapters"])


@router.get("/adapters")
def list_adapters(user: UserDep, session: SessionDep) -> ListPublic[AdapterPublic]:
    assert user.user_id is not None
    experts = AdapterRepository(session).list_visible_to(user_id=user.user_id)
    return ListPublic(data=[AdapterPublic.from_expert(a) for a in experts])

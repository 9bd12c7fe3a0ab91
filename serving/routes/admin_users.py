"""Admin: users and their API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from serving.deps import AdminDep, SessionDep, SettingsDep
from serving.schemas import (
    AdminUserDetail,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    FineTuningLimitsPublic,
    FineTuningLimitsUpdate,
    ListPublic,
    UserCreate,
    UserCreated,
    UserPublic,
)
from storage.repositories import (
    ApiKeyRepository,
    ExampleRepository,
    FeedbackRepository,
    UserRepository,
)

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, _admin: AdminDep, session: SessionDep) -> UserCreated:
    user = UserRepository(session).create(name=body.name)
    key, secret = ApiKeyRepository(session).create(user_id=user.id, scopes=body.scopes)
    session.commit()
    return UserCreated(
        id=user.id, name=user.name, created_at=user.created_at, key_id=key.id, api_key=secret
    )


@router.get("/users")
def list_users(
    _admin: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: str | None = None,
) -> ListPublic[UserPublic]:
    # One extra row tells whether another page follows.
    users = UserRepository(session).list_page(limit=limit + 1, after=after)
    return ListPublic(
        data=[UserPublic.model_validate(u) for u in users[:limit]], has_more=len(users) > limit
    )


@router.get("/users/{user_id}")
def get_user(user_id: str, _admin: AdminDep, session: SessionDep) -> AdminUserDetail:
    row = UserRepository(session).get(user_id=user_id)
    user = UserPublic.model_validate(row)
    return AdminUserDetail.model_validate(
        {
            **user.model_dump(exclude={"keys"}),
            "api_keys": user.keys,
            "max_generic_rise": row.finetune_max_generic_rise,
            "max_probe_loss": row.finetune_max_probe_loss,
            "feedback_count": FeedbackRepository(session).count(user_id=user_id),
            "example_count": ExampleRepository(session).count(user_id=user_id),
        }
    )


@router.patch("/users/{user_id}/fine-tuning")
def update_fine_tuning_limits(
    user_id: str,
    body: FineTuningLimitsUpdate,
    _admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
) -> FineTuningLimitsPublic:
    user = UserRepository(session).set_finetune_limits(user_id=user_id, changes=body.changes())
    session.commit()
    rise, probe_loss = user.finetune_max_generic_rise, user.finetune_max_probe_loss
    return FineTuningLimitsPublic(
        user_id=user.id,
        max_generic_rise=rise,
        max_probe_loss=probe_loss,
        effective_max_generic_rise=settings.finetune.max_generic_rise if rise is None else rise,
        effective_max_probe_loss=(
            settings.finetune.max_probe_loss if probe_loss is None else probe_loss
        ),
    )


@router.post("/users/{user_id}/keys", status_code=status.HTTP_201_CREATED)
def create_key(
    user_id: str, _admin: AdminDep, session: SessionDep, body: ApiKeyCreate | None = None
) -> ApiKeyCreated:
    scopes = (body or ApiKeyCreate()).scopes
    key, secret = ApiKeyRepository(session).create(user_id=user_id, scopes=scopes)
    session.commit()
    return ApiKeyCreated(**ApiKeyPublic.model_validate(key).model_dump(), api_key=secret)


@router.delete("/keys/{key_id}")
def revoke_key(key_id: str, _admin: AdminDep, session: SessionDep) -> ApiKeyPublic:
    key = ApiKeyRepository(session).revoke(key_id=key_id)
    session.commit()
    return ApiKeyPublic.model_validate(key)

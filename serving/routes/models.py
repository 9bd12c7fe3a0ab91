"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models a request can name."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from serving.deps import PrincipalDep, SessionDep, SettingsDep
from serving.errors import ApiError
from serving.model_host import enforced_context_length
from serving.schemas import AUTO_MODEL_ID, ListPublic, ModelPublic
from serving.settings import Settings
from storage.repositories import BaseModelRepository

router = APIRouter(prefix="/v1", tags=["models"])


def model_entries(session: Session, settings: Settings | None = None) -> list[ModelPublic]:
    """Every base model; with ``settings``, the context length a request gets (what
    serving enforces), else the model's own."""
    return [
        ModelPublic(
            id=model.id,
            created=int(model.created_at.timestamp()),
            architecture=model.architecture,
            parameters=model.parameter_count,
            context_length=(
                model.context_length
                if settings is None
                else enforced_context_length(model.context_length, settings)
            ),
            chat=model.chat_template is not None,
            cost_per_million_tokens=model.cost_per_million_tokens,
        )
        for model in BaseModelRepository(session).list_all()
    ]


@router.get("/models")
def list_models(
    _principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> ListPublic[ModelPublic]:
    entries = model_entries(session, settings)
    created = min((entry.created for entry in entries), default=0)
    # "auto" lets the router pick among the models above for each request.
    entries.append(ModelPublic(id=AUTO_MODEL_ID, created=created))
    return ListPublic(data=entries)


@router.get("/models/{model_id}")
def get_model(
    model_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> ModelPublic:
    """One entry of the list above, as OpenAI's ``models.retrieve`` asks for it."""
    for entry in list_models(principal, session, settings).data:
        if entry.id == model_id:
            return entry
    raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")

"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models a request can name.

The base models, ``auto``, and the caller's own fine-tuned models
(``ft:<base>:<suffix>:<version id>``, ``adapters.fine_tuned_models``); another
user's fine-tuned model is neither listed nor retrieved (404).
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from adapters.fine_tuned_models import fine_tuned_models
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


def fine_tuned_entries(
    session: Session, user_id: str, bases: list[ModelPublic]
) -> list[ModelPublic]:
    """The user's fine-tuned models (``adapters.fine_tuned_models``), each with the
    figures of the base model it runs on."""
    by_id = {entry.id: entry for entry in bases}
    entries = []
    for model in fine_tuned_models(session, user_id=user_id):
        base = by_id.get(model.base_model_id)
        if base is None:  # its base model is no longer registered
            continue
        entries.append(
            base.model_copy(
                update={
                    "id": model.id,
                    "created": int(model.created_at.timestamp()),
                    "owned_by": user_id,
                    "parent": base.id,
                }
            )
        )
    return entries


@router.get("/models")
def list_models(
    principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> ListPublic[ModelPublic]:
    entries = model_entries(session, settings)
    created = min((entry.created for entry in entries), default=0)
    fine_tuned = (
        [] if principal.user_id is None else fine_tuned_entries(session, principal.user_id, entries)
    )
    # "auto" lets the router pick among the models above for each request.
    entries.append(ModelPublic(id=AUTO_MODEL_ID, created=created))
    # Only the caller's own: another user's fine-tuned model is not even listed.
    return ListPublic(data=entries + fine_tuned)


@router.get("/models/{model_id}")
def get_model(
    model_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> ModelPublic:
    """One entry of the list above, as OpenAI's ``models.retrieve`` asks for it."""
    for entry in list_models(principal, session, settings).data:
        if entry.id == model_id:
            return entry
    raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")

"""``/admin/models``: the base models; add an operator's own model, remove an added one.

The same path as ``tailor models add`` / ``remove`` (``models.catalog.add_base_model``,
``remove_base_model``), reading the model from the server's own file system (a mounted
volume); the model is run through this server's engine before it enters the store
(``serving.model_host.check_serves``). A process with local engines serves an added
model at once and stops serving a removed one before its files go; under Ray Serve the
deployments change only when the application is deployed again.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, status

from models.catalog import add_base_model, remove_base_model
from models.store.add import AddOptions
from models.store.prepare import NO_CHAT_TEMPLATE, ChatTemplateChoice
from models.store.progress import PreparationStep
from serving.deps import AdminDep, OptionalRuntimeDep, ServicesDep, SessionDep
from serving.model_host import check_serves
from serving.routes.models import model_entries
from serving.schemas import (
    BaseModelAdded,
    BaseModelCreate,
    BaseModelDeleted,
    ListPublic,
    ModelPublic,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin/models", tags=["admin"])


@router.get("")
def list_base_models(_admin: AdminDep, session: SessionDep) -> ListPublic[ModelPublic]:
    """The base models (no ``auto``): what a job or an upload can name."""
    return ListPublic(data=model_entries(session))


def add_options(body: BaseModelCreate) -> AddOptions:
    if body.no_chat_template:
        template = NO_CHAT_TEMPLATE
    elif body.chat_template is not None:
        template = ChatTemplateChoice(keep_own=False, text=body.chat_template)
    else:
        template = ChatTemplateChoice()
    return AddOptions(
        chat_template=template,
        context_length=body.context_length,
        price=body.price,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_tokens,
    )


def _log_step(step: PreparationStep) -> None:
    logger.info("adding %s", step)


@router.post("", status_code=status.HTTP_201_CREATED)
def add_model(
    body: BaseModelCreate,
    _admin: AdminDep,
    services: ServicesDep,
    session: SessionDep,
    runtime: OptionalRuntimeDep,
) -> BaseModelAdded:
    """Add a Hugging Face directory (safetensors) or a GGUF file as a base model."""
    settings = services.settings
    row = add_base_model(
        services.database,
        settings.storage.model_store_dir,
        body.id,
        Path(body.path),
        add_options(body),
        prices=settings.router.prices,
        progress=_log_step,
        verify=partial(check_serves, settings=settings),
    )
    served = False
    if runtime is not None:
        try:
            served = runtime.serve_added(row)
        except Exception:  # stored and registered: the next start loads it again
            logger.exception("serving the added model %s failed", row.id)
    (entry,) = [entry for entry in model_entries(session) if entry.id == row.id]
    return BaseModelAdded(**entry.model_dump(), source=row.source, served=served)


@router.delete("/{model_id}")
def remove_model(
    model_id: str,
    _admin: AdminDep,
    services: ServicesDep,
    runtime: OptionalRuntimeDep,
    force: Annotated[
        bool, Query(description="Remove it although adapters exist (they stay, unserved).")
    ] = False,
) -> BaseModelDeleted:
    """Remove a model added with ``POST /admin/models`` or ``tailor models add``."""
    remove_base_model(
        services.database,
        services.settings.storage.model_store_dir,
        model_id,
        force=force,
        before_files_go=None if runtime is None else runtime.stop_serving,
    )
    return BaseModelDeleted(id=model_id)

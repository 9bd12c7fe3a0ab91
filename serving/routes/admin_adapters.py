"""Admin: every adapter and version; upload, promote, roll back, retire, download.

``{id}`` may name a version (``adv_``) or an adapter (``adp_``): promoting an
adapter promotes its newest candidate; rolling back or retiring a version
acts on its adapter (retire: on that version alone); downloading an adapter
gives its active version.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from adapters.peft_interop import export_peft_dir
from serving.adapter_upload import read_uploaded_adapter
from serving.deps import AdminDep, ServicesDep, SessionDep
from serving.errors import ApiError
from serving.request_text import text_problem
from serving.schemas import AdapterPublic, AdapterVersionPublic, ListPublic
from storage.repositories import AdapterRepository, UserRepository
from storage.tables import Adapter, AdapterKind, AdapterState, Decider

router = APIRouter(prefix="/admin/adapters", tags=["admin"])


@router.get("")
def list_adapters(
    _admin: AdminDep,
    session: SessionDep,
    user_id: str | None = None,
    base_model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ListPublic[AdapterPublic]:
    adapters: list[Adapter] = AdapterRepository(session).list_all(limit=limit)
    if user_id is not None:
        adapters = [a for a in adapters if a.user_id == user_id]
    if base_model is not None:
        adapters = [a for a in adapters if a.base_model_id == base_model]
    return ListPublic(data=[AdapterPublic.from_adapter(a) for a in adapters])


@router.post("", status_code=status.HTTP_201_CREATED)
async def upload_adapter(
    request: Request, _admin: AdminDep, services: ServicesDep
) -> AdapterVersionPublic:
    """Register a PEFT adapter (multipart) as a candidate, after validation."""
    registry = services.adapters
    form = await request.form()
    try:
        base_model = _form_text(form.get("base_model"), "base_model")
        kind = AdapterKind(_form_text(form.get("kind"), "kind") or AdapterKind.SPECIALIST.value)
        user_id = _form_text(form.get("user_id"), "user_id")
        name = _form_text(form.get("name"), "name") or "default"
        uploaded = await read_uploaded_adapter(form, max_bytes=registry.limits.max_file_bytes)
    finally:
        await form.close()
    if not base_model:
        raise ApiError(422, "base_model is required", code="invalid_body")
    if kind is AdapterKind.SPECIALIST and not user_id:
        raise ApiError(422, "a specialist upload needs user_id", code="invalid_body")
    if kind is AdapterKind.GENERALIST and user_id:
        raise ApiError(
            422, "a generalist belongs to no user: leave user_id out", code="invalid_body"
        )
    if user_id:
        with services.database.session() as session:
            UserRepository(session).get(user_id=user_id)
    version = await run_in_threadpool(
        registry.import_peft,
        base_model_id=base_model,
        kind=kind,
        user_id=user_id or None,
        config_json=uploaded.config_json,
        weights=uploaded.weights,
        gate=uploaded.gate,
        name=name,
    )
    return AdapterVersionPublic.model_validate(version)


# The columns the upload's text fields are stored in (storage.tables):
# adapters.base_model_id, adapters.user_id, adapters.name, adapters.kind.
_FORM_TEXT_CHARACTERS = {"base_model": 100, "user_id": 32, "name": 100, "kind": 32}


def _form_text(value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"{field} must be a text field", code="invalid_body")
    # The JSON bodies' text rule (serving.request_text), for these form fields.
    problem = text_problem(value)
    if problem is not None:
        raise ApiError(422, f"{field}: {problem}", code="invalid_body")
    if len(value) > _FORM_TEXT_CHARACTERS[field]:
        raise ApiError(
            422,
            f"{field}: at most {_FORM_TEXT_CHARACTERS[field]} characters",
            code="invalid_body",
        )
    if field == "kind" and value not in {k.value for k in AdapterKind}:
        raise ApiError(422, "kind must be specialist or generalist", code="invalid_body")
    return value


@router.post("/{target_id}/promote")
def promote(target_id: str, _admin: AdminDep, services: ServicesDep) -> AdapterVersionPublic:
    registry = services.adapters
    version = registry.find_version(target_id=target_id, prefer=AdapterState.CANDIDATE)
    promoted = registry.promote(version_id=version.id, by=Decider.ADMIN)
    return AdapterVersionPublic.model_validate(promoted)


@router.post("/{target_id}/rollback")
def rollback(target_id: str, _admin: AdminDep, services: ServicesDep) -> AdapterVersionPublic:
    registry = services.adapters
    adapter = registry.adapter_of(target_id=target_id)
    restored = registry.rollback(adapter_id=adapter.id, by=Decider.ADMIN)
    return AdapterVersionPublic.model_validate(restored)


@router.delete("/{target_id}")
def retire(
    target_id: str, _admin: AdminDep, services: ServicesDep
) -> ListPublic[AdapterVersionPublic]:
    registry = services.adapters
    if target_id.startswith("adv_"):
        retired = [registry.retire(version_id=target_id, by=Decider.ADMIN)]
    else:
        retired = registry.retire_adapter(
            adapter_id=registry.adapter_of(target_id=target_id).id, by=Decider.ADMIN
        )
    return ListPublic(data=[AdapterVersionPublic.model_validate(v) for v in retired])


@router.get(
    "/{target_id}/download",
    response_class=Response,
    responses={
        200: {
            "description": "A zip of the PEFT adapter directory",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def download(target_id: str, _admin: AdminDep, services: ServicesDep) -> Response:
    """The version as a PEFT adapter directory, zipped."""
    registry = services.adapters
    version = registry.find_version(target_id=target_id, prefer=AdapterState.ACTIVE)
    adapter = registry.adapter_of(target_id=version.adapter_id)
    if version.sha256 is None:
        raise ApiError(409, f"version {version.id} has no weights yet", code="invalid_transition")
    weights = registry.load_weights(sha256=version.sha256, base_model_id=adapter.base_model_id)
    archive = io.BytesIO()
    with tempfile.TemporaryDirectory() as scratch:
        export_peft_dir(weights, Path(scratch))
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted(Path(scratch).iterdir()):
                zipped.write(path, arcname=path.name)
    filename = f"{adapter.id}-v{version.version}.zip"
    return Response(
        archive.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

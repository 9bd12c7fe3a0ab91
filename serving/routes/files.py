"""``/v1/files``: the caller's training files, in the shape of OpenAI's files API.

Only ``purpose=fine-tune`` JSON Lines files of ``{"messages": [...]}`` are kept:
the conversations ``POST /v1/examples`` takes, checked by the same schema
(``serving.user_schemas.Example``). A file is validated line by line before
anything is stored, and a refusal names every bad line's number, so that one
upload tells the user all there is to fix. A file is the caller's alone: another
user's is a 404. ``POST /v1/fine_tuning/jobs`` trains on a file
(``serving.routes.fine_tuning``), which then cannot be deleted until the job ends.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.deps import ServicesDep, SessionDep, UserDep
from serving.errors import ApiError, BodyTooLarge
from serving.fine_tuning_schemas import FileDeletedPublic, FilePublic
from serving.request_text import printable, text_problem
from serving.routes.examples import MAX_BODY_BYTES, first_error
from serving.schemas import ListPublic
from serving.user_schemas import Example
from storage.repositories import TrainingFileRepository
from storage.repositories.training_files import FINE_TUNE_PURPOSE
from storage.tables import TrainingFile

router = APIRouter(prefix="/v1/files", tags=["files"])

# A file may be as large as a body of POST /v1/examples; the multipart framing and
# the purpose field come on top.
MAX_FILE_BYTES = MAX_BODY_BYTES
MAX_UPLOAD_BYTES = MAX_FILE_BYTES + (1 << 20)
# The column of training_files.filename.
FILENAME_CHARACTERS = 255
# Bad lines described one by one in an error; the numbers of all of them are given.
DESCRIBED_LINES = 5
NUMBERED_LINES = 100


def file_public(row: TrainingFile) -> FilePublic:
    return FilePublic(
        id=row.id,
        bytes=row.size_bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        examples=row.conversation_count,
    )


def parse_training_file(raw: bytes) -> list[Example]:
    """Every conversation of a JSON Lines file, or a 422 naming each bad line."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ApiError(
            422, f"the file is not UTF-8 text (byte {exc.start} is not)", code="invalid_file"
        ) from None
    examples: list[Example] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not JSON ({exc.msg})"))
            continue
        except (ValueError, RecursionError):
            # Integers of over 4300 digits, or nesting deeper than Python's stack.
            bad.append((number, "JSON beyond what is accepted"))
            continue
        try:
            examples.append(Example.model_validate(item))
        except ValidationError as exc:
            bad.append((number, first_error(exc)))
    if bad:
        numbers = ", ".join(str(n) for n, _ in bad[:NUMBERED_LINES])
        if len(bad) > NUMBERED_LINES:
            numbers += f" and {len(bad) - NUMBERED_LINES} more"
        described = "; ".join(f"line {n}: {printable(why)}" for n, why in bad[:DESCRIBED_LINES])
        raise ApiError(
            422,
            f"{len(bad)} line(s) of the file are not training conversations "
            f'({{"messages": [...]}} with at least one assistant message): lines {numbers}. '
            f"{described}",
            code="invalid_file",
        )
    if not examples:
        raise ApiError(
            422,
            'the file is empty: it needs one {"messages": [...]} conversation per line',
            code="invalid_file",
        )
    return examples


def _text_field(value: str | UploadFile | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be a text field", code="invalid_body")
    problem = text_problem(value)
    if problem is not None:
        raise ApiError(422, f"{name}: {problem}", code="invalid_body")
    return value


def _filename(upload: UploadFile) -> str:
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1] or "upload.jsonl"
    problem = text_problem(name)
    if problem is not None:
        raise ApiError(422, f"the file name {problem}", code="invalid_body")
    if len(name) > FILENAME_CHARACTERS:
        raise ApiError(
            422, f"the file name is over {FILENAME_CHARACTERS} characters", code="invalid_body"
        )
    return name


@router.post("", status_code=status.HTTP_201_CREATED)
async def upload_file(request: Request, user: UserDep, services: ServicesDep) -> FilePublic:
    """Store a training file (multipart: ``file`` and ``purpose=fine-tune``)."""
    assert user.user_id is not None
    user_id = user.user_id
    try:
        form = await request.form(max_files=2, max_fields=20)
    except BodyTooLarge:
        raise
    except StarletteHTTPException as exc:  # Starlette's refusal of a malformed form
        raise ApiError(
            422, f"the body is not a valid multipart form: {exc.detail}", code="invalid_body"
        ) from None
    try:
        for name in form:
            if name.startswith("expires_after"):
                raise ApiError(
                    400,
                    "expires_after: Tailor keeps a file until it is deleted",
                    code="unsupported_parameter",
                )
            if name not in ("file", "purpose"):
                raise ApiError(
                    400, f"unknown parameter: {printable(name)}", code="unsupported_parameter"
                )
        purpose = _text_field(form.get("purpose"), "purpose")
        if purpose is None:
            raise ApiError(422, "purpose is required (fine-tune)", code="invalid_body")
        if purpose != FINE_TUNE_PURPOSE:
            raise ApiError(
                400,
                f"purpose: Tailor keeps only {FINE_TUNE_PURPOSE} files, not {printable(purpose)!r}",
                code="unsupported_parameter",
            )
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "file is required, as a file of the form", code="invalid_body")
        filename = _filename(upload)
        # One byte past the cap tells "too large" without reading it all.
        raw = await upload.read(MAX_FILE_BYTES + 1)
    finally:
        await form.close()
    if len(raw) > MAX_FILE_BYTES:
        raise ApiError(413, f"the file is over {MAX_FILE_BYTES} bytes", code="too_large")
    examples = parse_training_file(raw)

    def store() -> FilePublic:
        with services.database.session() as session:
            row = TrainingFileRepository(session).add(
                user_id=user_id,
                filename=filename,
                content=raw,
                conversations=[[m.model_dump() for m in e.messages] for e in examples],
            )
            return file_public(row)

    return await run_in_threadpool(store)


@router.get("")
def list_files(
    user: UserDep,
    session: SessionDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=40)] = None,
) -> ListPublic[FilePublic]:
    assert user.user_id is not None
    rows = TrainingFileRepository(session).list_page(
        user_id=user.user_id, limit=limit + 1, after=after, order=order, purpose=purpose
    )
    return ListPublic(data=[file_public(r) for r in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{file_id}")
def get_file(file_id: str, user: UserDep, session: SessionDep) -> FilePublic:
    assert user.user_id is not None
    repository = TrainingFileRepository(session)
    return file_public(repository.get_for_user(file_id=file_id, user_id=user.user_id))


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file as sent"}
    },
)
def file_content(file_id: str, user: UserDep, session: SessionDep) -> Response:
    assert user.user_id is not None
    row = TrainingFileRepository(session).get_for_user(file_id=file_id, user_id=user.user_id)
    return Response(row.content, media_type="application/octet-stream")


@router.delete("/{file_id}")
def delete_file(file_id: str, user: UserDep, session: SessionDep) -> FileDeletedPublic:
    """Delete the file, unless a queued or running job uses it (409)."""
    assert user.user_id is not None
    TrainingFileRepository(session).delete(file_id=file_id, user_id=user.user_id)
    session.commit()
    return FileDeletedPublic(id=file_id)

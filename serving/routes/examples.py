"""``/v1/examples``: the caller's training examples (JSON or JSON Lines)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from serving.deps import CursorQuery, ServicesDep, SessionDep, UserDep
from serving.errors import ApiError
from serving.user_schemas import (
    MAX_EXAMPLES_PER_REQUEST,
    Example,
    ExamplePublic,
    ExamplesCreated,
    ExamplesPage,
)
from storage.repositories import ExampleRepository

router = APIRouter(prefix="/v1", tags=["examples"])

MAX_BODY_BYTES = 32 * 1024 * 1024
JSON_LINES_TYPES = ("application/jsonl", "application/x-ndjson", "application/jsonlines")


def first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _parse(raw: bytes, content_type: str) -> list[Example]:
    """Every example of the body, or a 422 naming the first bad one."""
    if content_type.split(";")[0].strip() in JSON_LINES_TYPES:
        items: list[tuple[str, Any]] = []
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ApiError(
                    422, f"line {number}: not JSON ({exc.msg})", code="invalid_example"
                ) from None
            except (ValueError, RecursionError):
                # Integers of over 4300 digits, or nesting deeper than Python's stack.
                raise ApiError(
                    422, f"line {number}: JSON beyond what is accepted", code="invalid_example"
                ) from None
    else:
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(422, f"the body is not JSON ({exc.msg})", code="invalid_body") from None
        except UnicodeDecodeError:
            raise ApiError(422, "the body is not UTF-8 text", code="invalid_body") from None
        except (ValueError, RecursionError):
            raise ApiError(
                422, "the body is JSON beyond what is accepted", code="invalid_body"
            ) from None
        if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
            raise ApiError(
                422, 'expected {"examples": [...]} or a JSON Lines body', code="invalid_body"
            )
        items = [(f"example {i}", item) for i, item in enumerate(body["examples"], start=1)]
    if not items:
        raise ApiError(422, "no examples in the request", code="invalid_body")
    if len(items) > MAX_EXAMPLES_PER_REQUEST:
        raise ApiError(
            413, f"at most {MAX_EXAMPLES_PER_REQUEST} examples per request", code="too_large"
        )
    examples = []
    for where, item in items:
        try:
            examples.append(Example.model_validate(item))
        except ValidationError as exc:
            raise ApiError(422, f"{where}: {first_error(exc)}", code="invalid_example") from None
    return examples


@router.post("/examples", status_code=status.HTTP_201_CREATED)
async def add_examples(request: Request, user: UserDep, services: ServicesDep) -> ExamplesCreated:
    assert user.user_id is not None
    user_id = user.user_id
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes", code="too_large")
    examples = _parse(bytes(raw), request.headers.get("content-type", "application/json"))

    def store() -> int:
        # One transaction: all of the request's examples are stored, or none.
        with services.database.session() as session:
            repository = ExampleRepository(session)
            repository.add_many(
                user_id=user_id,
                examples=[[m.model_dump() for m in e.messages] for e in examples],
            )
            return repository.count(user_id=user_id)

    total = await run_in_threadpool(store)
    return ExamplesCreated(stored=len(examples), total=total)


@router.get("/examples")
def list_examples(
    user: UserDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: CursorQuery = 0,
) -> ExamplesPage:
    assert user.user_id is not None
    repository = ExampleRepository(session)
    rows = repository.list_page(user_id=user.user_id, limit=limit + 1, after_id=after)
    return ExamplesPage(
        total=repository.count(user_id=user.user_id),
        data=[ExamplePublic.model_validate(r) for r in rows[:limit]],
        has_more=len(rows) > limit,
    )

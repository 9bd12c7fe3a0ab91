"""``/v1/fine-tunes``: queue, list, follow and cancel the caller's fine-tune jobs.

The jobs are rows; the worker that runs them is ``finetune``'s (issue #6). The
OpenAI-shaped ``/v1/fine_tuning/jobs`` (``serving.routes.fine_tuning``) shows and
queues the same rows through the helpers here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy.orm import Session

from finetune.admission import check_specialist_data
from finetune.errors import DatasetError
from models.catalog import served_models
from router.decision import Candidate
from router.default_model import default_model
from serving.deps import CursorQuery, SessionDep, SettingsDep, UserDep
from serving.errors import ApiError
from serving.schemas import ListPublic
from serving.settings import Settings
from serving.user_schemas import FineTuneCreate, FineTunePublic, Hyperparameters, JobEventPublic
from storage.repositories import BaseModelRepository, JobRepository
from storage.tables import AdapterKind, BaseModelRow, FineTuneJob

router = APIRouter(prefix="/v1/fine-tunes", tags=["fine-tunes"])


def job_public(job: FineTuneJob) -> FineTunePublic:
    return FineTunePublic(
        id=job.id,
        status=job.state,
        model=job.base_model_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        adapter_id=job.adapter_id,
        result_version_id=job.result_version_id,
        hyperparameters=job.hyperparameters,
        attempt=job.attempt,
        error=job.error,
        outcome=job.outcome if job.outcome in ("promoted", "held_back") else None,
        outcome_reason=job.outcome_reason,
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
    )


def events_page(
    jobs: JobRepository, *, job_id: str, after: int, limit: int
) -> ListPublic[JobEventPublic]:
    """A job's events after the id ``after``, oldest first (the caller checked access)."""
    events = jobs.list_events(job_id=job_id, after_id=after, limit=limit + 1)
    return ListPublic(
        data=[JobEventPublic.model_validate(e) for e in events[:limit]],
        has_more=len(events) > limit,
    )


def known_model(models: Sequence[BaseModelRow], model_id: str) -> str:
    """``model_id`` if it names a base model in ``models`` (those served here), else a 404."""
    if model_id not in {m.id for m in models}:
        raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")
    return model_id


def job_model(session: Session, settings: Settings, requested: str) -> str:
    """The base model a user's job trains on: ``requested`` if it is served here, or
    for ``auto`` the model ``auto`` would answer with (a 404 or 400 otherwise)."""
    models = served_models(BaseModelRepository(session).list_all(), settings.engine.models)
    if requested != "auto":
        return known_model(models, requested)
    if not models:
        raise ApiError(400, "no base model is served here", code="no_route")
    # The model `auto` would answer with: the router's rule (router.default_model).
    candidates = [
        Candidate(m.id, m.cost_per_million_tokens, chat=m.chat_template is not None) for m in models
    ]
    return default_model(candidates, settings.router.default_model)


def check_learnable(
    session: Session, *, user_id: str, base_model_id: str, hyperparameters: dict[str, Any]
) -> None:
    """A 422 naming what is missing when a specialist job could learn nothing."""
    try:
        check_specialist_data(
            session, user_id=user_id, base_model_id=base_model_id, hyperparameters=hyperparameters
        )
    except DatasetError as exc:
        raise ApiError(422, str(exc), code="invalid_training_data") from None


def job_hyperparameters(hyperparameters: Hyperparameters, settings: Settings) -> dict[str, Any]:
    """What a job row stores: the values given, once checked against what is served."""
    rank = hyperparameters.rank
    if rank is not None and rank > settings.engine.max_adapter_rank:
        raise ApiError(
            400,
            f"rank must be at most {settings.engine.max_adapter_rank}",
            code="invalid_hyperparameters",
        )
    batch = hyperparameters.batch_size
    if batch is not None and batch > settings.finetune.batch_size:
        raise ApiError(
            400,
            f"batch_size must be at most {settings.finetune.batch_size} "
            "(TAILOR_FINETUNE_BATCH_SIZE)",
            code="invalid_hyperparameters",
        )
    return hyperparameters.model_dump(exclude_none=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": FineTunePublic, "description": "The job queued before with this key"}
    },
)
def create_fine_tune(
    body: FineTuneCreate,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FineTunePublic:
    assert user.user_id is not None
    model_id = job_model(session, settings, body.model)
    hyperparameters = job_hyperparameters(body.hyperparameters, settings)
    jobs = JobRepository(session)
    replayed = (
        jobs.by_idempotency_key(user_id=user.user_id, key=idempotency_key)
        if idempotency_key is not None
        else None
    )
    if replayed is None:
        check_learnable(
            session,
            user_id=user.user_id,
            base_model_id=model_id,
            hyperparameters=hyperparameters,
        )
    job, created = jobs.create(
        kind=AdapterKind.SPECIALIST,
        base_model_id=model_id,
        user_id=user.user_id,
        hyperparameters=hyperparameters,
        idempotency_key=idempotency_key,
    )
    session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return job_public(job)


@router.get("")
def list_fine_tunes(
    user: UserDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> ListPublic[FineTunePublic]:
    assert user.user_id is not None
    jobs = JobRepository(session).list_page(user_id=user.user_id, limit=limit)
    return ListPublic(data=[job_public(j) for j in jobs])


@router.get("/{job_id}")
def get_fine_tune(job_id: str, user: UserDep, session: SessionDep) -> FineTunePublic:
    assert user.user_id is not None
    return job_public(JobRepository(session).get_for_user(job_id=job_id, user_id=user.user_id))


@router.get("/{job_id}/events")
def fine_tune_events(
    job_id: str,
    user: UserDep,
    session: SessionDep,
    after: CursorQuery = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ListPublic[JobEventPublic]:
    assert user.user_id is not None
    jobs = JobRepository(session)
    jobs.get_for_user(job_id=job_id, user_id=user.user_id)
    return events_page(jobs, job_id=job_id, after=after, limit=limit)


@router.post("/{job_id}/cancel")
def cancel_fine_tune(job_id: str, user: UserDep, session: SessionDep) -> FineTunePublic:
    assert user.user_id is not None
    job = JobRepository(session).request_cancel(job_id=job_id, user_id=user.user_id)
    session.commit()
    return job_public(job)

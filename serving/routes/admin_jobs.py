"""``/admin/jobs``: all fine-tune jobs; queue a specialist or a generalist; cancel, retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from models.catalog import served_models
from serving.deps import AdminDep, CursorQuery, SessionDep, SettingsDep
from serving.routes.fine_tunes import (
    check_learnable,
    events_page,
    job_hyperparameters,
    job_public,
    known_model,
)
from serving.schemas import ListPublic
from serving.user_schemas import AdminJobCreate, AdminJobPublic, JobEventPublic
from storage.repositories import BaseModelRepository, JobRepository, UserRepository
from storage.tables import AdapterKind, FineTuneJob, JobState

router = APIRouter(prefix="/admin/jobs", tags=["admin"])


def admin_job_public(job: FineTuneJob) -> AdminJobPublic:
    return AdminJobPublic(
        **job_public(job).model_dump(exclude={"object"}),
        user_id=job.user_id,
        kind=job.kind,
        target=job.target_key,
        trigger=job.trigger,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
    )


@router.get("")
def list_jobs(
    _admin: AdminDep,
    session: SessionDep,
    state: JobState | None = None,
    user_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ListPublic[AdminJobPublic]:
    jobs = JobRepository(session).list_page(user_id=user_id, state=state, limit=limit)
    return ListPublic(data=[admin_job_public(j) for j in jobs])


@router.post("", status_code=status.HTTP_201_CREATED)
def queue_job(
    body: AdminJobCreate, _admin: AdminDep, session: SessionDep, settings: SettingsDep
) -> AdminJobPublic:
    """A specialist of ``user_id`` on their data, or a generalist on every user's data."""
    known_model(
        served_models(BaseModelRepository(session).list_all(), settings.engine.models), body.model
    )
    hyperparameters = job_hyperparameters(body.hyperparameters, settings)
    if body.user_id is not None:
        UserRepository(session).get(user_id=body.user_id)
        check_learnable(
            session,
            user_id=body.user_id,
            base_model_id=body.model,
            hyperparameters=hyperparameters,
        )
    job, _ = JobRepository(session).create(
        kind=AdapterKind.GENERALIST if body.user_id is None else AdapterKind.SPECIALIST,
        base_model_id=body.model,
        user_id=body.user_id,
        hyperparameters=hyperparameters,
        trigger="admin",
    )
    session.commit()
    return admin_job_public(job)


@router.get("/{job_id}")
def get_job(job_id: str, _admin: AdminDep, session: SessionDep) -> AdminJobPublic:
    return admin_job_public(JobRepository(session).get(job_id=job_id))


@router.get("/{job_id}/events")
def job_events(
    job_id: str,
    _admin: AdminDep,
    session: SessionDep,
    after: CursorQuery = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ListPublic[JobEventPublic]:
    jobs = JobRepository(session)
    jobs.get(job_id=job_id)
    return events_page(jobs, job_id=job_id, after=after, limit=limit)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, _admin: AdminDep, session: SessionDep) -> AdminJobPublic:
    job = JobRepository(session).request_cancel(job_id=job_id)
    session.commit()
    return admin_job_public(job)


@router.post("/{job_id}/retry")
def retry_job(job_id: str, _admin: AdminDep, session: SessionDep) -> AdminJobPublic:
    job = JobRepository(session).retry(job_id=job_id)
    session.commit()
    return admin_job_public(job)

"""Fine-tune jobs and their events (the rows; the queue logic is ``finetune``'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.clock import utc_now
from storage.errors import Conflict, NotFound
from storage.ids import new_id
from storage.tables import AdapterKind, FineTuneJob, JobEvent, JobState

DEFAULT_MAX_ATTEMPTS = 3


def specialist_target(user_id: str, base_model_id: str) -> str:
    return f"specialist:{user_id}:{base_model_id}"


def generalist_target(base_model_id: str) -> str:
    return f"generalist:{base_model_id}"


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def create(
        self,
        *,
        kind: AdapterKind,
        base_model_id: str,
        user_id: str | None,
        hyperparameters: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        trigger: str = "api",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        training_file_id: str | None = None,
        validation_file_id: str | None = None,
        suffix: str | None = None,
    ) -> tuple[FineTuneJob, bool]:
        """Queue a job; returns it and whether it is new.

        With an ``idempotency_key``, a retried request returns the job the
        first request created instead of queueing another.
        """
        if (kind is AdapterKind.SPECIALIST) != (user_id is not None):
            raise ValueError("a specialist job belongs to one user; a generalist job to none")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if user_id is None and (training_file_id or validation_file_id):
            raise ValueError("a generalist job trains on every user's data, not on a file")
        if validation_file_id is not None and training_file_id is None:
            raise ValueError("a validation file goes with a training file")
        if idempotency_key is not None:
            existing = self.by_idempotency_key(user_id=user_id, key=idempotency_key)
            if existing is not None:
                return existing, False
        target = (
            specialist_target(user_id, base_model_id)
            if user_id is not None
            else generalist_target(base_model_id)
        )
        now = utc_now()
        job = FineTuneJob(
            id=new_id("ftjob"),
            user_id=user_id,
            kind=kind,
            base_model_id=base_model_id,
            target_key=target,
            state=JobState.QUEUED,
            trigger=trigger,
            idempotency_key=idempotency_key,
            hyperparameters=hyperparameters or {},
            attempt=0,
            max_attempts=max_attempts,
            run_after=now,
            cancel_requested=False,
            created_at=now,
            training_file_id=training_file_id,
            validation_file_id=validation_file_id,
            suffix=suffix,
        )
        try:
            with self.session.begin_nested():
                self.session.add(job)
        except IntegrityError:
            # Lost a race with the same key: the winner's job is the answer.
            assert idempotency_key is not None
            winner = self.by_idempotency_key(user_id=user_id, key=idempotency_key)
            if winner is None:
                raise
            return winner, False
        return job, True

    def by_idempotency_key(self, *, user_id: str | None, key: str) -> FineTuneJob | None:
        query = select(FineTuneJob).where(
            FineTuneJob.user_id == user_id, FineTuneJob.idempotency_key == key
        )
        return self.session.scalar(query)

    def get(self, *, job_id: str) -> FineTuneJob:
        job = self.session.get(FineTuneJob, job_id)
        if job is None:
            raise NotFound(f"fine-tune job {job_id} not found")
        return job

    def get_for_user(self, *, job_id: str, user_id: str) -> FineTuneJob:
        job = self.session.get(FineTuneJob, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound(f"fine-tune job {job_id} not found")
        return job

    def list_page(
        self,
        *,
        user_id: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[FineTuneJob]:
        """Jobs newest first; ``after`` (with a ``user_id``: one of that user's jobs,
        else ``NotFound``) continues after that job."""
        query = select(FineTuneJob).order_by(FineTuneJob.created_at.desc(), FineTuneJob.id.desc())
        if after is not None:
            cursor = (
                self.get(job_id=after)
                if user_id is None
                else self.get_for_user(job_id=after, user_id=user_id)
            )
            query = query.where(
                (FineTuneJob.created_at < cursor.created_at)
                | ((FineTuneJob.created_at == cursor.created_at) & (FineTuneJob.id < cursor.id))
            )
        if user_id is not None:
            query = query.where(FineTuneJob.user_id == user_id)
        if state is not None:
            query = query.where(FineTuneJob.state == state)
        return list(self.session.scalars(query.limit(limit)))

    def request_cancel(self, *, job_id: str, user_id: str | None = None) -> FineTuneJob:
        """Cancel a queued job at once; ask a running one to stop (its worker
        sees ``cancel_requested`` at its next heartbeat)."""
        job = (
            self.get(job_id=job_id)
            if user_id is None
            else self.get_for_user(job_id=job_id, user_id=user_id)
        )
        if job.state is JobState.QUEUED:
            job.state = JobState.CANCELLED
            job.finished_at = utc_now()
        elif job.state is JobState.RUNNING:
            job.cancel_requested = True
        else:
            raise Conflict(f"fine-tune job {job_id} already ended ({job.state.value})")
        self.session.flush()
        return job

    def retry(self, *, job_id: str) -> FineTuneJob:
        """Queue a failed or cancelled job again, with a fresh budget of attempts.

        The same row keeps its history (events, attempt count): attempts go on
        counting up, so writes of any earlier attempt stay fenced off.
        """
        job = self.get(job_id=job_id)
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise Conflict(
                f"fine-tune job {job_id} is {job.state.value}; only a failed or cancelled "
                "job can be retried"
            )
        job.state = JobState.QUEUED
        job.max_attempts = job.attempt + DEFAULT_MAX_ATTEMPTS
        job.run_after = utc_now()
        job.cancel_requested = False
        job.error = None
        job.finished_at = None
        self.session.flush()
        return job

    def add_event(
        self, *, job_id: str, attempt: int, kind: str, payload: dict[str, Any]
    ) -> JobEvent:
        event = JobEvent(
            job_id=job_id, attempt=attempt, kind=kind, payload=payload, created_at=utc_now()
        )
        self.session.add(event)
        self.session.flush()
        return event

    def list_events(self, *, job_id: str, after_id: int = 0, limit: int = 1000) -> list[JobEvent]:
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        return list(self.session.scalars(query))

    def list_events_newest_first(
        self, *, job_id: str, before_id: int | None = None, limit: int = 20
    ) -> list[JobEvent]:
        """The job's events newest first (OpenAI's order), older than ``before_id``."""
        query = select(JobEvent).where(JobEvent.job_id == job_id)
        if before_id is not None:
            query = query.where(JobEvent.id < before_id)
        return list(self.session.scalars(query.order_by(JobEvent.id.desc()).limit(limit)))

    def latest_payloads(self, *, job_ids: Sequence[str], kind: str) -> dict[str, dict[str, Any]]:
        """Per job, the payload of its newest event of ``kind`` (jobs without one left out)."""
        if not job_ids:
            return {}
        query = (
            select(JobEvent)
            .where(JobEvent.job_id.in_(list(job_ids)), JobEvent.kind == kind)
            .order_by(JobEvent.id)
        )
        return {event.job_id: dict(event.payload) for event in self.session.scalars(query)}

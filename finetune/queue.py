"""The fine-tune job queue over the SQL job table (the table is the truth).

A worker claims the oldest runnable job with a lease, renews the lease by
heartbeat, and ends the job. Every write a worker makes is fenced by the job's
``attempt`` and the worker's name: once a lease has expired and the job was
handed to another worker (attempt + 1), the first worker's heartbeats, events
and results are refused with ``LeaseLost``, so a job that outlived its worker
still finishes exactly once.

A job whose lease expired counts as a failed attempt (its worker died) and goes
back to the queue, unless it has used all its attempts. Every claim sweeps
such jobs first, and ``requeue_expired`` sweeps them without claiming, so that
the API server can free them while no worker runs; both lock the rows they end
(where the database can) and skip rows another sweeper holds, so an attempt
is ended once, and never after a new lease was granted. Failures retry with
exponential backoff up to ``max_attempts``, then the job ends ``failed`` with
its error. At most one job per expert (``target_key``) runs at a time: claims
skip such jobs, and a partial unique index makes it hold even under races.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune.errors import JobCancelled, LeaseLost
from storage.clock import utc_now
from storage.database import Database
from storage.repositories import JobRepository
from storage.tables import AdapterKind, FineTuneJob, JobState

DEFAULT_LEASE_SECONDS = 60.0
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 600.0
LOST_WORKER_ERROR = "the worker stopped renewing its lease (it died or hung)"


def retry_delay(attempt: int, base_seconds: float = BACKOFF_BASE_SECONDS) -> timedelta:
    """Wait before attempt ``attempt + 1``: 10 s, 20 s, 40 s ... at most 10 min."""
    return timedelta(seconds=min(base_seconds * 2 ** (attempt - 1), BACKOFF_CAP_SECONDS))


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker holds while it owns a job; ``attempt`` fences its writes."""

    job_id: str
    attempt: int
    worker: str
    kind: AdapterKind
    user_id: str | None
    base_model_id: str
    target_key: str
    hyperparameters: dict[str, Any]
    # Set for a job of the OpenAI-shaped API: it trains on this uploaded file (and
    # validates on the other) instead of the user's examples and liked answers.
    training_file_id: str | None = None
    validation_file_id: str | None = None


@dataclass(frozen=True)
class ExpiredLease:
    """A job whose worker went silent: its attempt, and the state the job is in now."""

    job_id: str
    attempt: int
    state: JobState


class JobQueue:
    def __init__(
        self,
        database: Database,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        retry_base_seconds: float = BACKOFF_BASE_SECONDS,
    ):
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if retry_base_seconds < 0:
            raise ValueError("retry_base_seconds must not be negative")
        self.database = database
        self.lease_seconds = lease_seconds
        self.retry_base_seconds = retry_base_seconds

    # Claiming ---------------------------------------------------------------------

    def claim(self, worker: str) -> ClaimedJob | None:
        """The oldest runnable job, now leased to ``worker``; None when there is none."""
        if not worker:
            raise ValueError("a worker needs a name")
        self.requeue_expired()
        # A concurrent claimer may take a candidate first: try the next ones.
        for _ in range(5):
            with self.database.session() as session:
                job = self._next_runnable(session)
                if job is None:
                    return None
                now = utc_now()
                job.state = JobState.RUNNING
                job.attempt += 1
                job.lease_owner = worker
                job.lease_expires_at = now + timedelta(seconds=self.lease_seconds)
                job.started_at = job.started_at or now
                try:
                    session.flush()
                except IntegrityError:
                    # Another job of the same expert started in between.
                    session.rollback()
                    continue
                return ClaimedJob(
                    job_id=job.id,
                    attempt=job.attempt,
                    worker=worker,
                    kind=job.kind,
                    user_id=job.user_id,
                    base_model_id=job.base_model_id,
                    target_key=job.target_key,
                    hyperparameters=dict(job.hyperparameters),
                    training_file_id=job.training_file_id,
                    validation_file_id=job.validation_file_id,
                )
        return None

    def _next_runnable(self, session: Session) -> FineTuneJob | None:
        running = select(FineTuneJob.target_key).where(FineTuneJob.state == JobState.RUNNING)
        query = (
            select(FineTuneJob)
            .where(
                FineTuneJob.state == JobState.QUEUED,
                FineTuneJob.run_after <= utc_now(),
                FineTuneJob.target_key.not_in(running),
            )
            .order_by(FineTuneJob.run_after, FineTuneJob.created_at, FineTuneJob.id)
            .limit(1)
        )
        if session.get_bind().dialect.name == "postgresql":
            # Two claimers never wait on, or take, the same row.
            query = query.with_for_update(skip_locked=True)
        return session.scalar(query)

    def requeue_expired(self) -> list[ExpiredLease]:
        """End every running attempt whose lease has expired, as ``claim`` does first.

        Each counts as a failed, retryable attempt: back to ``queued`` after a
        backoff, or ``failed`` once the job has used all its attempts (``cancelled``
        if a cancel was asked for). Returns what happened to each job.
        """
        with self.database.session() as session:
            query = select(FineTuneJob).where(
                FineTuneJob.state == JobState.RUNNING, FineTuneJob.lease_expires_at < utc_now()
            )
            if session.get_bind().dialect.name == "postgresql":
                # Locking re-checks the condition, so a job re-leased meanwhile is
                # left alone; one another sweeper holds is that sweeper's to end.
                query = query.with_for_update(skip_locked=True)
            ended = []
            for job in session.scalars(query).all():
                attempt = job.attempt
                error = LOST_WORKER_ERROR
                if attempt >= job.max_attempts:
                    error += f", on its last attempt ({attempt} of {job.max_attempts})"
                state = self._end_attempt(session, job, error, retryable=True)
                ended.append(ExpiredLease(job_id=job.id, attempt=attempt, state=state))
            return ended

    # The owner's writes (all fenced) --------------------------------------------------

    def heartbeat(self, claim: ClaimedJob) -> bool:
        """Renew the lease; returns whether a cancel was requested. ``LeaseLost`` if
        the job is no longer this worker's."""
        with self.database.session() as session:
            job = self._owned(session, claim)
            job.lease_expires_at = utc_now() + timedelta(seconds=self.lease_seconds)
            return job.cancel_requested

    def add_event(self, claim: ClaimedJob, kind: str, payload: dict[str, Any]) -> None:
        """Progress (step, loss, tokens/s, ETA ...) for the API and the dashboard."""
        with self.database.session() as session:
            self._owned(session, claim)
            JobRepository(session).add_event(
                job_id=claim.job_id, attempt=claim.attempt, kind=kind, payload=payload
            )

    def succeed(
        self,
        claim: ClaimedJob,
        *,
        result_version_id: str | None,
        adapter_id: str | None = None,
        outcome: str | None = None,
        outcome_reason: str | None = None,
    ) -> None:
        with self.database.session() as session:
            job = self._owned(session, claim)
            job.state = JobState.SUCCEEDED
            job.result_version_id = result_version_id
            job.adapter_id = adapter_id or job.adapter_id
            job.outcome, job.outcome_reason = outcome, outcome_reason
            job.error = None
            self._release(job)

    def check_owned(self, session: Session, claim: ClaimedJob) -> None:
        """Inside another transaction: ``LeaseLost`` unless the job is still this
        worker's, ``JobCancelled`` if a cancel was asked for. Registering a
        version calls this, so a version commits only with a live lease."""
        job = self._owned(session, claim)
        if job.cancel_requested:
            raise JobCancelled(f"job {claim.job_id} was cancelled")

    def cancelled(self, claim: ClaimedJob) -> None:
        """The worker stopped on request: the job ends ``cancelled``."""
        with self.database.session() as session:
            job = self._owned(session, claim)
            job.state = JobState.CANCELLED
            self._release(job)

    def fail(self, claim: ClaimedJob, error: str, *, retryable: bool = True) -> JobState:
        """End this attempt: back to the queue after a backoff while attempts remain
        and the error is retryable, else ``failed``. Returns the job's new state."""
        with self.database.session() as session:
            job = self._owned(session, claim)
            return self._end_attempt(session, job, error, retryable=retryable)

    def _owned(self, session: Session, claim: ClaimedJob) -> FineTuneJob:
        # Lock the row where the database can, so the check and the write are one.
        query = select(FineTuneJob).where(FineTuneJob.id == claim.job_id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        job = session.scalar(query)
        now = utc_now()
        if (
            job is None
            or job.state is not JobState.RUNNING
            or job.attempt != claim.attempt
            or job.lease_owner != claim.worker
            or job.lease_expires_at is None
            or job.lease_expires_at < now
        ):
            raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} is no longer leased")
        return job

    def _end_attempt(
        self, session: Session, job: FineTuneJob, error: str, *, retryable: bool
    ) -> JobState:
        job.error = error
        if job.cancel_requested:
            job.state = JobState.CANCELLED
            self._release(job)
        elif retryable and job.attempt < job.max_attempts:
            job.state = JobState.QUEUED
            job.run_after = utc_now() + retry_delay(job.attempt, self.retry_base_seconds)
            job.lease_owner = None
            job.lease_expires_at = None
        else:
            job.state = JobState.FAILED
            self._release(job)
        session.flush()
        return job.state

    @staticmethod
    def _release(job: FineTuneJob) -> None:
        job.lease_owner = None
        job.lease_expires_at = None
        job.finished_at = utc_now()

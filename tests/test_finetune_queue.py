"""The fine-tune queue on both databases: leases, fencing, retries, one running job
per expert, cancellation, and racing workers."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from finetune.errors import LeaseLost
from finetune.queue import LOST_WORKER_ERROR, ClaimedJob, JobQueue, retry_delay
from storage.clock import utc_now
from storage.database import Database
from storage.repositories import JobRepository
from storage.tables import AdapterKind, FineTuneJob, JobState
from tests.test_repositories import add_base_model, add_user

MODEL = "tiny-1m"


@pytest.fixture
def queue(database: Database) -> JobQueue:
    add_base_model(database, MODEL)
    return JobQueue(database, lease_seconds=30)


def submit(database: Database, user_id: str | None, **extra: Any) -> str:
    kind = AdapterKind.SPECIALIST if user_id else AdapterKind.GENERALIST
    with database.session() as session:
        job, _ = JobRepository(session).create(
            kind=kind, base_model_id=MODEL, user_id=user_id, **extra
        )
        return job.id


def job(database: Database, job_id: str) -> FineTuneJob:
    with database.session() as session:
        found = JobRepository(session).get(job_id=job_id)
        session.expunge(found)
        return found


def expire_lease(database: Database, job_id: str) -> None:
    with database.session() as session:
        session.execute(
            update(FineTuneJob)
            .where(FineTuneJob.id == job_id)
            .values(lease_expires_at=utc_now() - timedelta(seconds=1))
        )


def make_runnable(database: Database, job_id: str) -> None:
    with database.session() as session:
        session.execute(
            update(FineTuneJob).where(FineTuneJob.id == job_id).values(run_after=utc_now())
        )


def test_jobs_are_claimed_oldest_first_with_a_lease(queue: JobQueue, database: Database) -> None:
    users = [add_user(database, f"u{i}") for i in range(2)]
    first, second = (submit(database, u) for u in users)
    claim = queue.claim("worker-a")
    assert claim is not None and (claim.job_id, claim.attempt) == (first, 1)
    row = job(database, first)
    assert row.state is JobState.RUNNING and row.lease_owner == "worker-a"
    assert row.lease_expires_at is not None and row.lease_expires_at > utc_now()
    other = queue.claim("worker-b")
    assert other is not None and other.job_id == second
    assert queue.claim("worker-c") is None


def test_one_expert_never_runs_twice_at_once(queue: JobQueue, database: Database) -> None:
    user = add_user(database, "solo")
    first = submit(database, user, idempotency_key="a")
    second = submit(database, user, idempotency_key="b")  # the same expert
    claim = queue.claim("w1")
    assert claim is not None and claim.job_id == first
    assert queue.claim("w2") is None  # waits for the first to end
    queue.succeed(claim, result_version_id=None)
    follow_up = queue.claim("w2")
    assert follow_up is not None and follow_up.job_id == second


def test_a_dead_workers_job_is_re_leased_and_its_writes_are_fenced(
    queue: JobQueue, database: Database
) -> None:
    job_id = submit(database, add_user(database, "lost"))
    dead = queue.claim("dead")
    assert dead is not None
    expire_lease(database, job_id)
    with pytest.raises(LeaseLost):
        queue.heartbeat(dead)
    # The next claim counts the lost attempt and queues a retry after a backoff.
    assert queue.claim("alive") is None
    row = job(database, job_id)
    assert (row.state, row.error) == (JobState.QUEUED, LOST_WORKER_ERROR)
    assert row.run_after > utc_now() + retry_delay(1) - timedelta(seconds=5)
    make_runnable(database, job_id)
    alive = queue.claim("alive")
    assert alive is not None and alive.attempt == 2
    # The first worker wakes up: nothing it writes is taken.
    for write in (
        lambda: queue.heartbeat(dead),
        lambda: queue.add_event(dead, "progress", {"step": 1}),
        lambda: queue.succeed(dead, result_version_id=None),
        lambda: queue.fail(dead, "late"),
    ):
        with pytest.raises(LeaseLost):
            write()
    queue.add_event(alive, "progress", {"step": 1})
    queue.succeed(alive, result_version_id=None)
    row = job(database, job_id)
    assert (row.state, row.attempt, row.error) == (JobState.SUCCEEDED, 2, None)
    with database.session() as session:
        events = JobRepository(session).list_events(job_id=job_id)
        assert [(e.attempt, e.payload) for e in events] == [(2, {"step": 1})]


def test_failures_retry_with_backoff_then_fail_with_the_error(
    queue: JobQueue, database: Database
) -> None:
    job_id = submit(database, add_user(database, "flaky"), max_attempts=2)
    first = queue.claim("w")
    assert first is not None
    assert queue.fail(first, "out of memory") is JobState.QUEUED
    assert queue.claim("w") is None  # backing off
    make_runnable(database, job_id)
    second = queue.claim("w")
    assert second is not None and second.attempt == 2
    assert queue.fail(second, "out of memory again") is JobState.FAILED
    row = job(database, job_id)
    assert (row.state, row.error) == (JobState.FAILED, "out of memory again")
    assert row.finished_at is not None and row.lease_owner is None


def test_a_permanent_error_fails_at_once(queue: JobQueue, database: Database) -> None:
    submit(database, add_user(database, "empty"))
    claim = queue.claim("w")
    assert claim is not None
    assert queue.fail(claim, "no training examples", retryable=False) is JobState.FAILED


def test_a_cancel_reaches_the_worker_at_its_next_heartbeat(
    queue: JobQueue, database: Database
) -> None:
    user = add_user(database, "stopper")
    job_id = submit(database, user)
    claim = queue.claim("w")
    assert claim is not None and queue.heartbeat(claim) is False
    with database.session() as session:
        JobRepository(session).request_cancel(job_id=job_id, user_id=user)
    assert queue.heartbeat(claim) is True
    queue.cancelled(claim)
    assert job(database, job_id).state is JobState.CANCELLED
    # A cancelled job whose worker died ends cancelled, not retried.
    other = submit(database, add_user(database, "stopper-2"))
    dying = queue.claim("w")
    assert isinstance(dying, ClaimedJob) and dying.job_id == other
    with database.session() as session:
        JobRepository(session).request_cancel(job_id=other)
    expire_lease(database, other)
    assert queue.claim("w") is None
    assert job(database, other).state is JobState.CANCELLED


def test_racing_workers_claim_each_job_once(queue: JobQueue, database: Database) -> None:
    jobs = {submit(database, add_user(database, f"racer-{i}")) for i in range(12)}
    claimed: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        try:
            while (claim := queue.claim(name)) is not None:
                with lock:
                    claimed.append(claim.job_id)
                queue.succeed(claim, result_version_id=None)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    assert sorted(claimed) == sorted(jobs)


def test_bad_settings_are_refused(database: Database) -> None:
    with pytest.raises(ValueError):
        JobQueue(database, lease_seconds=0)
    with pytest.raises(ValueError):
        JobQueue(database).claim("")

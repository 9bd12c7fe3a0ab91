"""Automatic fine-tune jobs on both databases: the new-data threshold, scheduled
retraining, the generalist's schedule, and never two waiting jobs per expert."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from finetune.queue import JobQueue
from finetune.triggers import JobTrigger, TriggerPolicy, queue_due_jobs
from serving.settings import load_settings
from storage.clock import utc_now
from storage.database import Database
from storage.repositories import (
    AdapterRepository,
    ExampleRepository,
    FeedbackRepository,
    JobRepository,
    ResponseRepository,
)
from storage.repositories.jobs import specialist_target
from storage.tables import AdapterKind, FineTuneJob, JobState
from tests.test_repositories import SHA, add_base_model, add_response, add_user

MODEL = "tiny-1m"
OTHER_MODEL = "tiny-2m"
THRESHOLD_3 = TriggerPolicy(new_examples=3)
CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.fixture
def db(database: Database) -> Database:
    """A database with one base model."""
    add_base_model(database, MODEL)
    return database


def add_examples(database: Database, user_id: str, count: int) -> None:
    with database.session() as session:
        ExampleRepository(session).add_many(user_id=user_id, examples=[CHAT] * count)


def add_version(database: Database, user_id: str | None, model: str = MODEL) -> None:
    """A new trained version of the user's specialist (the generalist for None)."""
    kind = AdapterKind.SPECIALIST if user_id else AdapterKind.GENERALIST
    with database.session() as session:
        adapters = AdapterRepository(session)
        expert = adapters.find_adapter(
            kind=kind, base_model_id=model, user_id=user_id
        ) or adapters.create_adapter(kind=kind, base_model_id=model, user_id=user_id)
        adapters.add_version(
            adapter_id=expert.id, rank=8, alpha=16.0, target_modules=["q_proj"], sha256=SHA
        )


def trigger(
    database: Database, policy: TriggerPolicy, *, later: timedelta = timedelta(0)
) -> list[FineTuneJob]:
    """Run the trigger as if ``later`` had passed; the new jobs, detached."""
    with database.session() as session:
        jobs = queue_due_jobs(session, policy, base_model_id=MODEL, now=utc_now() + later)
        for job in jobs:
            session.expunge(job)
        return jobs


def all_jobs(database: Database) -> list[tuple[str | None, AdapterKind, str, JobState]]:
    with database.session() as session:
        return [
            (job.user_id, job.kind, job.trigger, job.state)
            for job in reversed(JobRepository(session).list_page())
        ]


def finish(database: Database, job_id: str) -> None:
    queue = JobQueue(database)
    claim = queue.claim("worker")
    assert claim is not None and claim.job_id == job_id
    queue.succeed(claim, result_version_id=None)


def test_a_user_past_the_threshold_gets_one_job(db: Database) -> None:
    user = add_user(db, "writer")
    add_examples(db, user, 2)
    assert trigger(db, THRESHOLD_3) == []
    add_examples(db, user, 1)
    [job] = trigger(db, THRESHOLD_3)
    assert (job.user_id, job.kind, job.trigger, job.state) == (
        user,
        AdapterKind.SPECIALIST,
        "threshold",
        JobState.QUEUED,
    )
    assert job.target_key == specialist_target(user, MODEL)
    assert all_jobs(db) == [(user, AdapterKind.SPECIALIST, "threshold", JobState.QUEUED)]


def test_a_queued_or_running_job_is_never_joined_by_another(db: Database) -> None:
    user = add_user(db, "busy")
    add_examples(db, user, 3)
    [job] = trigger(db, THRESHOLD_3)
    add_examples(db, user, 5)  # past the threshold again while it waits
    assert trigger(db, THRESHOLD_3) == []
    claim = JobQueue(db).claim("worker")
    assert claim is not None and claim.job_id == job.id
    assert trigger(db, THRESHOLD_3) == []
    assert len(all_jobs(db)) == 1
    JobQueue(db).succeed(claim, result_version_id=None)
    # What arrived after the job was queued may not be in it: it counts afresh.
    [follow_up] = trigger(db, THRESHOLD_3)
    assert follow_up.trigger == "threshold" and follow_up.id != job.id
    assert trigger(db, THRESHOLD_3) == []


def test_counting_restarts_from_the_newest_version(db: Database) -> None:
    user = add_user(db, "trained")
    add_examples(db, user, 5)
    add_version(db, user)
    assert trigger(db, THRESHOLD_3) == []
    add_examples(db, user, 2)
    assert trigger(db, THRESHOLD_3) == []
    add_examples(db, user, 1)
    [job] = trigger(db, THRESHOLD_3)
    assert job.user_id == user
    # A version of the same user's expert on another base model is another target.
    add_base_model(db, OTHER_MODEL, params=2_000_000)
    with db.session() as session:
        [other] = queue_due_jobs(session, THRESHOLD_3, base_model_id=OTHER_MODEL)
        assert other.target_key == specialist_target(user, OTHER_MODEL)


def test_a_finished_job_counts_as_training_even_without_a_version(db: Database) -> None:
    user = add_user(db, "done")
    add_examples(db, user, 3)
    [job] = trigger(db, THRESHOLD_3)
    finish(db, job.id)
    assert trigger(db, THRESHOLD_3) == []
    add_examples(db, user, 2)
    assert trigger(db, THRESHOLD_3) == []


def test_liked_chat_answers_count_once_and_nothing_else_does(db: Database) -> None:
    user = add_user(db, "rater")
    add_examples(db, user, 1)
    for response_id in ("liked", "disliked", "preferred", "rejected"):
        add_response(db, user, response_id)
    with db.session() as session:
        ResponseRepository(session).record(
            response_id="text",
            user_id=user,
            base_model_id=MODEL,
            endpoint="completions",
            request={"prompt": "hi"},
            output_text="hello",
            finish_reason="stop",
            routing_decision={},
            adapters_used=[],
            prompt_tokens=1,
            completion_tokens=1,
        )
    with db.session() as session:
        feedback = FeedbackRepository(session)
        feedback.record(user_id=user, response_id="liked", rating=1)
        # The same answer liked again, by preference: still one conversation.
        feedback.record(user_id=user, response_id="liked", preferred_over_id="disliked")
        feedback.record(user_id=user, response_id="disliked", rating=-1)
        feedback.record(user_id=user, response_id="rejected", rating=0)
        # A text completion has no answer turn to learn.
        feedback.record(user_id=user, response_id="text", rating=1)
    assert trigger(db, THRESHOLD_3) == []  # one example + one liked answer
    with db.session() as session:
        FeedbackRepository(session).record(
            user_id=user, response_id="preferred", preferred_over_id="rejected"
        )
    [job] = trigger(db, THRESHOLD_3)
    assert (job.user_id, job.trigger) == (user, "threshold")


def test_a_liked_answer_older_than_the_version_is_not_new(db: Database) -> None:
    user = add_user(db, "old-likes")
    add_response(db, user, "liked")
    with db.session() as session:
        FeedbackRepository(session).record(user_id=user, response_id="liked", rating=1)
    add_version(db, user)
    add_examples(db, user, 2)
    assert trigger(db, THRESHOLD_3) == []
    # Liking it again after the version does not make it a new conversation.
    add_response(db, user, "other")
    with db.session() as session:
        FeedbackRepository(session).record(
            user_id=user, response_id="liked", preferred_over_id="other"
        )
    assert trigger(db, THRESHOLD_3) == []


def test_users_are_counted_apart(db: Database) -> None:
    alice, bob = add_user(db, "alice"), add_user(db, "bob")
    add_examples(db, alice, 3)
    add_examples(db, bob, 2)
    [job] = trigger(db, THRESHOLD_3)
    assert job.user_id == alice
    # Alice's version restarts Alice's count, not Bob's.
    add_version(db, alice)
    add_examples(db, bob, 1)
    [job] = trigger(db, THRESHOLD_3)
    assert job.user_id == bob
    assert sorted(u for u, *_ in all_jobs(db) if u is not None) == sorted([alice, bob])


def test_a_threshold_of_zero_turns_the_trigger_off(db: Database) -> None:
    user = add_user(db, "quiet")
    add_examples(db, user, 100)
    assert trigger(db, TriggerPolicy(new_examples=0)) == []
    assert JobTrigger(db, TriggerPolicy(), [MODEL]).run_once() == []
    assert all_jobs(db) == []


def test_a_failed_or_cancelled_job_waits_for_new_data(db: Database) -> None:
    user = add_user(db, "canceller")
    add_examples(db, user, 3)
    [job] = trigger(db, THRESHOLD_3)
    with db.session() as session:
        JobRepository(session).request_cancel(job_id=job.id, user_id=user)
    assert trigger(db, THRESHOLD_3) == []  # the cancel is not undone
    # The cancelled job learnt nothing: the old examples still count.
    add_examples(db, user, 1)
    [retry] = trigger(db, THRESHOLD_3)
    queue = JobQueue(db)
    claim = queue.claim("worker")
    assert claim is not None and claim.job_id == retry.id
    assert queue.fail(claim, "unusable data", retryable=False) is JobState.FAILED
    assert trigger(db, THRESHOLD_3) == []  # no retry storm
    add_examples(db, user, 1)
    [again] = trigger(db, THRESHOLD_3)
    assert again.trigger == "threshold"


def test_scheduled_retraining_comes_when_due_and_there_is_something_new(
    db: Database,
) -> None:
    policy = TriggerPolicy(new_examples=0, retrain_interval=timedelta(hours=1))
    user = add_user(db, "regular")
    newcomer = add_user(db, "newcomer")
    add_examples(db, user, 20)
    add_version(db, user)
    add_examples(db, newcomer, 20)  # never trained: that is the threshold's business
    assert trigger(db, policy, later=timedelta(hours=2)) == []  # nothing new for user
    add_examples(db, user, 1)
    assert trigger(db, policy) == []  # the version is younger than an hour
    [job] = trigger(db, policy, later=timedelta(hours=2))
    assert (job.user_id, job.kind, job.trigger) == (user, AdapterKind.SPECIALIST, "schedule")
    assert trigger(db, policy, later=timedelta(hours=2)) == []  # queued already


def test_the_threshold_wins_over_the_schedule(db: Database) -> None:
    policy = TriggerPolicy(new_examples=3, retrain_interval=timedelta(hours=1))
    user = add_user(db, "both")
    add_version(db, user)
    add_examples(db, user, 3)
    [job] = trigger(db, policy, later=timedelta(hours=2))
    assert job.trigger == "threshold"


def test_the_generalist_is_retrained_on_its_schedule(db: Database) -> None:
    policy = TriggerPolicy(generalist_interval=timedelta(hours=6))
    assert trigger(db, policy) == []  # nobody has any data
    user = add_user(db, "contributor")
    add_examples(db, user, 1)
    [job] = trigger(db, policy)
    assert (job.user_id, job.kind, job.trigger, job.target_key) == (
        None,
        AdapterKind.GENERALIST,
        "schedule",
        f"generalist:{MODEL}",
    )
    add_examples(db, user, 1)
    assert trigger(db, policy, later=timedelta(hours=7)) == []  # still queued
    finish(db, job.id)
    add_examples(db, user, 1)
    assert trigger(db, policy) == []  # trained less than six hours ago
    [job] = trigger(db, policy, later=timedelta(hours=7))
    assert job.kind is AdapterKind.GENERALIST
    finish(db, job.id)
    add_version(db, None)
    assert trigger(db, policy, later=timedelta(hours=7)) == []  # nothing new since
    assert [kind for _, kind, *_ in all_jobs(db)] == [AdapterKind.GENERALIST] * 2


def test_the_job_trigger_commits_jobs_for_each_base_model(db: Database) -> None:
    add_base_model(db, OTHER_MODEL, params=2_000_000)
    user = add_user(db, "everywhere")
    add_examples(db, user, 3)
    created = JobTrigger(db, THRESHOLD_3, lambda: [MODEL]).run_once()
    assert len(created) == 1
    # Every enabled base model when none are named; the first model's job waits.
    created += JobTrigger(db, THRESHOLD_3).run_once()
    assert len(created) == 2
    with db.session() as session:
        jobs = [JobRepository(session).get(job_id=job_id) for job_id in created]
        assert [job.base_model_id for job in jobs] == [MODEL, OTHER_MODEL]
    with pytest.raises(TypeError):
        JobTrigger(db, THRESHOLD_3, MODEL)


def test_racing_triggers_queue_one_job(db: Database) -> None:
    user = add_user(db, "raced")
    add_examples(db, user, 3)
    start = threading.Barrier(6)
    created: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            created.extend(JobTrigger(db, THRESHOLD_3, [MODEL]).run_once())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(created) == 1 and len(all_jobs(db)) == 1


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="new_examples"):
        TriggerPolicy(new_examples=-1)
    with pytest.raises(ValueError, match="retrain_interval"):
        TriggerPolicy(retrain_interval=timedelta(hours=-1))
    with pytest.raises(ValueError, match="generalist_interval"):
        TriggerPolicy(generalist_interval=timedelta(0))


def test_the_policy_comes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TRIGGER_NEW_EXAMPLES", "RETRAIN_INTERVAL_HOURS", "GENERALIST_INTERVAL_HOURS"):
        monkeypatch.delenv(f"TAILOR_FINETUNE_{name}", raising=False)
    default = TriggerPolicy.from_settings(load_settings(storage={"data_dir": tmp_path}).finetune)
    assert default == TriggerPolicy(new_examples=50)
    policy = TriggerPolicy.from_settings(
        load_settings(
            storage={"data_dir": tmp_path},
            finetune={
                "trigger_new_examples": 0,
                "retrain_interval_hours": 24,
                "generalist_interval_hours": 0.5,
            },
        ).finetune
    )
    assert policy == TriggerPolicy(
        new_examples=0,
        retrain_interval=timedelta(days=1),
        generalist_interval=timedelta(minutes=30),
    )
    assert not TriggerPolicy.from_settings(
        load_settings(storage={"data_dir": tmp_path}, finetune={"trigger_new_examples": 0}).finetune
    ).enabled

"""A job of the OpenAI-shaped API trains on its uploaded file and nothing else: the
worker's data for it, the split of a file, the admission rules that keep the two kinds
of job apart, OpenAI's learning-rate multiplier in the plan. On both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import AdapterRegistry
from finetune.admission import check_file_data, check_specialist_data
from finetune.config import TrainingConfig
from finetune.conversations import (
    MIN_TEST_CONVERSATIONS,
    TokenizedConversation,
    split_by_time,
    split_for_file,
)
from finetune.errors import DatasetError
from finetune.queue import JobQueue
from finetune.training_plan import plan_training
from finetune.worker import FinetuneWorker, WorkerConfig, _load_tokenizer
from storage.database import Database
from storage.errors import NotFound
from storage.repositories import JobRepository, TrainingFileRepository
from storage.tables import AdapterKind, JobState
from tests.finetune_fixtures import (
    MODEL,
    add_examples,
    add_user,
    pirate_conversations,
    registry_on,
)
from tests.server import prepared_model_store


def tokenized(count: int, tag: int = 0) -> list[TokenizedConversation]:
    return [TokenizedConversation([tag, i], [tag, i], question=f"{tag}-{i}") for i in range(count)]


def test_a_file_is_split_in_its_line_order_and_a_validation_file_validates() -> None:
    lines = tokenized(20)
    assert split_for_file(lines) == split_by_time(lines)
    validation = tokenized(3, tag=1)
    split = split_for_file(lines, validation)
    assert split.validation == validation
    # The newest lines (the file's last) are the test split, at least the gate's minimum.
    assert split.test == lines[-MIN_TEST_CONVERSATIONS:] and split.train == lines[:15]
    with pytest.raises(DatasetError, match="at least 10"):
        split_for_file(tokenized(9), validation)
    with pytest.raises(DatasetError, match="validation file"):
        split_for_file(lines, [])


def test_the_learning_rate_multiplier_scales_the_planned_rate_only() -> None:
    plain = plan_training(TrainingConfig(), train_conversations=20)
    halved = plan_training(
        TrainingConfig().with_hyperparameters({"learning_rate_multiplier": 0.5, "seed": 3}),
        train_conversations=20,
    )
    assert halved.learning_rate == pytest.approx(plain.learning_rate / 2)
    assert halved.chosen == ("learning_rate_multiplier",)
    # A rate given as such is used as given.
    given = TrainingConfig().with_hyperparameters({"learning_rate": 0.002})
    assert plan_training(given, train_conversations=20).learning_rate == 0.002
    with pytest.raises(ValueError, match="learning_rate_multiplier"):
        TrainingConfig(learning_rate_multiplier=0)


@pytest.fixture
def registry(database_url: str, tmp_path: Path) -> Iterator[AdapterRegistry]:
    with registry_on(database_url, tmp_path) as found:
        yield found


def chat(question: str, answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def add_file(database: Database, user_id: str, conversations: list[list[dict[str, Any]]]) -> str:
    with database.session() as session:
        return (
            TrainingFileRepository(session)
            .add(user_id=user_id, filename="f.jsonl", content=b"...", conversations=conversations)
            .id
        )


def queue_file_job(
    database: Database, user_id: str, training: str, validation: str | None = None
) -> str:
    with database.session() as session:
        job, _ = JobRepository(session).create(
            kind=AdapterKind.SPECIALIST,
            base_model_id=MODEL,
            user_id=user_id,
            training_file_id=training,
            validation_file_id=validation,
        )
        return job.id


def test_file_jobs_and_example_jobs_are_admitted_each_on_their_own_data(
    registry: AdapterRegistry,
) -> None:
    database = registry.database
    ada = add_user(database, "ada")
    add_examples(database, ada, pirate_conversations(10))
    training = add_file(database, ada, [chat(f"q{i}", f"a{i}") for i in range(12)])
    job_id = queue_file_job(database, ada, training)
    bob = add_user(database, "bob")
    with database.session() as session:
        JobRepository(session).get(job_id=job_id).state = JobState.SUCCEEDED
    with database.session() as session:
        files = TrainingFileRepository(session)
        training_file = files.get_for_user(file_id=training, user_id=ada)
        # The same file and hyperparameters would train the same adapter again ...
        with pytest.raises(DatasetError, match="same hyperparameters"):
            check_file_data(
                session,
                user_id=ada,
                base_model_id=MODEL,
                training_file=training_file,
                validation_file=None,
                hyperparameters={},
            )
        # ... other hyperparameters would not,
        assert (
            check_file_data(
                session,
                user_id=ada,
                base_model_id=MODEL,
                training_file=training_file,
                validation_file=None,
                hyperparameters={"seed": 1},
            )
            == 12
        )
        # and the file job is no "last job" of the examples: they were never learnt.
        assert (
            check_specialist_data(session, user_id=ada, base_model_id=MODEL, hyperparameters={})
            == 10
        )
        # A file is its owner's alone.
        with pytest.raises(NotFound):
            files.get_for_user(file_id=training, user_id=bob)


def make_worker(registry: AdapterRegistry) -> FinetuneWorker:
    queue = JobQueue(registry.database, lease_seconds=30, retry_base_seconds=0)
    config = WorkerConfig(name="w1", model_store_dir=prepared_model_store(), device="cpu")
    return FinetuneWorker(queue, registry, config)


@pytest.mark.slow
def test_the_worker_learns_from_the_file_alone(registry: AdapterRegistry) -> None:
    database = registry.database
    ada = add_user(database, "ada")
    # Her examples and the file differ: only the file's conversations may be used.
    add_examples(database, ada, pirate_conversations(30))
    file_lines = [chat(f"What is {i} and {i}?", f"{2 * i}.") for i in range(14)]
    training = add_file(database, ada, file_lines)
    validation = add_file(database, ada, [chat("What is 9 and 1?", "10.")] * 3)
    worker = make_worker(registry)
    tokenizer = _load_tokenizer(prepared_model_store() / MODEL)

    queue_file_job(database, ada, training, validation)
    claim = worker.queue.claim("w1")
    assert claim is not None and claim.training_file_id == training
    data = worker._prepare_data(claim, tokenizer, max_length=2048)
    assert data.source_counts == {"training_file": 14, "validation_file": 3}
    assert len(data.split.validation) == 3
    assert len(data.split.train) + len(data.split.test) == 14
    assert [c.question for c in data.split.test] == [
        m[0]["content"] for m in file_lines[-len(data.split.test) :]
    ]
    worker.queue.cancelled(claim)

    # A job whose file was deleted (a retry after the file went) fails with the reason.
    job_id = queue_file_job(database, ada, training)
    with database.session() as session:
        session.delete(TrainingFileRepository(session).get_for_user(file_id=training, user_id=ada))
    assert worker.run_one() == job_id
    with database.session() as session:
        job = JobRepository(session).get(job_id=job_id)
        assert job.state is JobState.FAILED
        assert job.error == f"the training file {training} was deleted"

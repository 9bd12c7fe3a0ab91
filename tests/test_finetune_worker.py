"""The fine-tune worker in-process, on the real SmolLM2 weights (CPU, NF4 base).

A job runs from claim to promotion: events in order, the candidate scored as
it will be served, promoted only through the evaluation gate, exactly one
version per job however attempts end. Jobs that cannot run fail with a clear
error; a cancel stops a run and registers nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.registry import AdapterRegistry
from finetune.config import TrainingConfig
from finetune.generic_text import GENERIC_TEXTS
from finetune.queue import JobQueue
from finetune.worker import FinetuneWorker, WorkerConfig
from storage.clock import utc_now
from storage.repositories import AdapterRepository, JobRepository, UserRepository
from storage.tables import (
    Adapter,
    AdapterKind,
    AdapterState,
    AdapterVersion,
    Decider,
    FineTuneJob,
    JobState,
    User,
)
from tests.adapter_factory import random_lora
from tests.backends import REDIS_URL, postgres_schema
from tests.finetune_fixtures import MODEL, add_examples, add_user, pirate_conversations, registry_on
from tests.server import prepared_model_store

# Every test runs the worker in process, which loads a tokenizer or a model: a second or more.
pytestmark = pytest.mark.slow

FAST = TrainingConfig(epochs=2, batch_size=4, rank=8, alpha=16.0)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[AdapterRegistry]:
    # PostgreSQL + Redis: training is the slow part and does not depend on the
    # backend; the queue, the fencing and the registry are tested on both.
    with postgres_schema() as url, registry_on(url, tmp_path, REDIS_URL) as found:
        yield found


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[AdapterRegistry]:
    with registry_on(f"sqlite:///{tmp_path / 'tailor.db'}", tmp_path) as found:
        yield found


def make_worker(registry: AdapterRegistry, name: str = "w1", **config: object) -> FinetuneWorker:
    queue = JobQueue(registry.database, lease_seconds=30, retry_base_seconds=0)
    settings = WorkerConfig(
        name=name,
        model_store_dir=prepared_model_store(),
        device="cpu",
        training=FAST,
        heartbeat_seconds=0.2,
        progress_every_seconds=0.01,
        # A few generic passages: CPU forwards are slow, and the rule is the same.
        generic_texts=GENERIC_TEXTS[:6],
        # No factual probes: the fixtures' template answers forget facts by design (see
        # tests/server.py's CPU_WORKER_SETTINGS); the probe rule has its own tests.
        factual_probes=(),
        **config,  # type: ignore[arg-type]
    )
    return FinetuneWorker(queue, registry, settings)


def queue_job(registry: AdapterRegistry, user_id: str | None, **hyperparameters: object) -> str:
    with registry.database.session() as session:
        job, _ = JobRepository(session).create(
            kind=AdapterKind.SPECIALIST if user_id else AdapterKind.GENERALIST,
            base_model_id=MODEL,
            user_id=user_id,
            hyperparameters=dict(hyperparameters),
        )
        return job.id


def job_state(registry: AdapterRegistry, job_id: str) -> tuple[JobState, str | None, list[str]]:
    with registry.database.session() as session:
        jobs = JobRepository(session)
        job = jobs.get(job_id=job_id)
        return job.state, job.error, [e.kind for e in jobs.list_events(job_id=job_id)]


def versions_of(registry: AdapterRegistry, user_id: str | None) -> list[AdapterVersion]:
    with registry.database.session() as session:
        adapters = AdapterRepository(session)
        kind = AdapterKind.SPECIALIST if user_id else AdapterKind.GENERALIST
        expert = adapters.find_adapter(kind=kind, base_model_id=MODEL, user_id=user_id)
        return [] if expert is None else adapters.list_versions(adapter_id=expert.id)


def test_a_job_trains_evaluates_and_promotes_a_specialist(registry: AdapterRegistry) -> None:
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(14))
    job_id = queue_job(registry, alice)

    assert make_worker(registry).run_one() == job_id

    state, error, kinds = job_state(registry, job_id)
    assert (state, error) == (JobState.SUCCEEDED, None)
    assert kinds[:4] == ["started", "dataset", "plan", "progress"]
    assert kinds[-3:] == ["evaluation", "registered", "promoted"]
    # The evaluation reports its stages as it goes, like training its steps.
    evaluating = kinds[kinds.index("trained") + 1 : kinds.index("evaluation")]
    assert evaluating and set(evaluating) == {"evaluating"}
    with registry.database.session() as session:
        events = JobRepository(session).list_events(job_id=job_id)
        job = JobRepository(session).get(job_id=job_id)
    progress = [e.payload for e in events if e.kind == "progress"]
    assert progress[-1]["step"] == progress[-1]["total_steps"] > 1
    stages = [e.payload for e in events if e.kind == "evaluating"]
    assert [s["done"] for s in stages] == list(range(1, stages[0]["total"] + 1))
    assert stages[0]["stage"] == "test split: base model" and stages[-1]["seconds"] > 0
    assert all(p["tokens_per_second"] > 0 and p["eta_seconds"] >= 0 for p in progress)
    assert progress[-1]["loss"] < progress[0]["loss"]  # it learnt
    dataset = next(e.payload for e in events if e.kind == "dataset")
    assert (dataset["train"], dataset["validation"], dataset["test"]) == (7, 2, 5)
    plan = next(e.payload for e in events if e.kind == "plan")
    assert plan["steps"] >= progress[-1]["step"] and plan["chosen"] == ["epochs"]
    checked = [p["validation_loss"] for p in progress if p["validation_loss"] is not None]
    assert checked, "the validation loss is reported at its checks"

    [version] = versions_of(registry, alice)
    assert version.state is AdapterState.ACTIVE and version.job_id == job_id
    assert version.promoted_by == "gate"
    assert job.result_version_id == version.id and job.adapter_id == version.adapter_id
    assert (job.outcome, job.outcome_reason) == ("promoted", None)
    report = version.eval_metrics
    assert report["promote"] is True and report["reasons"] == []
    nll = report["nll_per_token"]
    assert nll["candidate"] < nll["base"] and report["gain_vs_base"]["lower"] > 0
    assert report["generic_rise"] <= 0.10
    assert report["probes_lost"] == [] or len(report["probes_lost"]) <= 1
    # What was registered is what serving resolves for Alice, and only for her.
    experts = registry.expert_set(base_model_id=MODEL, user_id=alice)
    assert experts.specialist is not None and experts.specialist.version_id == version.id
    bob = add_user(registry.database, "bob")
    assert registry.expert_set(base_model_id=MODEL, user_id=bob).specialist is None


def test_an_admins_limit_for_one_user_judges_that_users_jobs(
    sqlite_registry: AdapterRegistry,
) -> None:
    registry = sqlite_registry
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(14))
    with registry.database.session() as session:
        # No change to ordinary text allowed: any style is held back, with the reason.
        UserRepository(session).set_finetune_limits(
            user_id=alice, changes={"max_generic_rise": 0.0}
        )
    job_id = queue_job(registry, alice)

    assert make_worker(registry).run_one() == job_id

    [version] = versions_of(registry, alice)
    report = version.eval_metrics
    where = f"this user's own limit, PATCH /admin/users/{alice}/fine-tuning"
    # The report says which limits judged it and who set them.
    assert report["limits"] == {
        "max_generic_rise": 0.0,
        "max_generic_rise_set_by": where,
        "max_probe_loss": 0.05,
        "max_probe_loss_set_by": "TAILOR_FINETUNE_MAX_PROBE_LOSS",
    }
    # Whether a style raises or lowers the generic NLL depends on the data: a rise is
    # held back with the user's limit named, a fall passes.
    if report["generic_rise"] > 0:
        assert version.state is AdapterState.CANDIDATE
        [reason] = [r for r in report["reasons"] if "generic text" in r]
        assert "at most 0% allowed" in reason and where in reason
        with registry.database.session() as session:
            job = JobRepository(session).get(job_id=job_id)
        assert job.outcome == "held_back" and reason in (job.outcome_reason or "")
    else:
        assert not any("generic text" in r for r in report["reasons"])


def test_a_specialist_trains_beside_the_generalist_with_a_gate(
    sqlite_registry: AdapterRegistry,
) -> None:
    registry = sqlite_registry
    alice = add_user(registry.database, "alice")
    bob = add_user(registry.database, "bob")
    add_examples(registry.database, alice, pirate_conversations(10))
    add_examples(registry.database, bob, pirate_conversations(10))
    worker = make_worker(registry)

    generalist_job = queue_job(registry, None)
    assert worker.run_one() == generalist_job
    state, error, _ = job_state(registry, generalist_job)
    assert (state, error) == (JobState.SUCCEEDED, None)
    [generalist] = versions_of(registry, None)
    # Pooled data of both users.
    assert generalist.state is AdapterState.ACTIVE, generalist.eval_metrics["reasons"]

    specialist_job = queue_job(registry, alice)
    assert worker.run_one() == specialist_job
    state, error, _ = job_state(registry, specialist_job)
    assert state is JobState.SUCCEEDED, error
    with registry.database.session() as session:
        events = JobRepository(session).list_events(job_id=specialist_job)
    trained = next(e.payload for e in events if e.kind == "trained")
    assert trained["gate_steps"] == trained["steps"] > 0  # bi-level: one gate step per step
    # The base model's generic-text scores were kept from the worker's first job.
    stages = [e.payload["stage"] for e in events if e.kind == "evaluating"]
    assert "generic text: base model (kept from an earlier job)" in stages
    progress = [e.payload for e in events if e.kind == "progress"]
    assert all(p["gate_loss"] is not None for p in progress)

    [specialist] = versions_of(registry, alice)
    assert specialist.sha256 is not None
    weights = registry.load_weights(sha256=specialist.sha256, base_model_id=MODEL)
    # The gate scores the generalist, then the specialist itself.
    assert weights.has_gate and weights.gate_experts == (generalist.adapter_id,)
    report = specialist.eval_metrics
    # "current" is what Alice got before: the generalist alone.
    assert report["gain_vs_current"] is not None
    assert report["nll_per_token"]["current"] < report["nll_per_token"]["base"]


@pytest.mark.parametrize(
    ("conversations", "message"),
    [
        (0, "no data to learn from"),
        (5, "at least 10 are needed"),
        # One conversation longer than the model's context is left out, not fatal: here
        # it leaves 9, too few.
        (-1, "(1 more were left out: longer than the"),
    ],
)
def test_unusable_data_fails_the_job_at_once_with_a_clear_error(
    sqlite_registry: AdapterRegistry, conversations: int, message: str
) -> None:
    registry = sqlite_registry
    alice = add_user(registry.database, "alice")
    if conversations >= 0:
        add_examples(registry.database, alice, pirate_conversations(conversations))
    else:
        long_answer = "word " * 9000
        add_examples(
            registry.database,
            alice,
            [
                *pirate_conversations(9),
                [
                    {"role": "user", "content": "Go on."},
                    {"role": "assistant", "content": long_answer},
                ],
            ],
        )
    job_id = queue_job(registry, alice)

    make_worker(registry).run_one()

    state, error, kinds = job_state(registry, job_id)
    assert state is JobState.FAILED and error is not None and message in error
    assert kinds[-1] == "error"
    with registry.database.session() as session:
        assert JobRepository(session).get(job_id=job_id).attempt == 1  # not retried
    assert versions_of(registry, alice) == []


def test_a_cancel_stops_the_run_and_registers_nothing(sqlite_registry: AdapterRegistry) -> None:
    registry = sqlite_registry
    alice, job_id, run = start_a_long_job(registry)
    with registry.database.session() as session:
        JobRepository(session).request_cancel(job_id=job_id, user_id=alice)
    run.join(timeout=60)

    assert not run.is_alive()
    state, _, kinds = job_state(registry, job_id)
    assert state is JobState.CANCELLED and kinds[-1] == "cancelled"
    assert "trained" not in kinds and versions_of(registry, alice) == []


def test_a_worker_that_lost_its_lease_registers_nothing_and_the_job_ends_once(
    sqlite_registry: AdapterRegistry,
) -> None:
    registry = sqlite_registry
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(12))
    job_id = queue_job(registry, alice)
    slow = make_worker(registry, "slow")
    claim = slow.queue.claim("slow")
    assert claim is not None
    # The slow worker's lease runs out and another worker takes the job over.
    expire_lease(registry, job_id)
    fast = make_worker(registry, "fast")
    assert fast.run_one() == job_id

    slow.execute(claim)  # finds its lease gone: writes nothing

    state, _, _ = job_state(registry, job_id)
    [version] = versions_of(registry, alice)
    assert state is JobState.SUCCEEDED and version.job_id == job_id
    with registry.database.session() as session:
        job = JobRepository(session).get(job_id=job_id)
        events = JobRepository(session).list_events(job_id=job_id)
    assert job.attempt == 2 and {e.attempt for e in events} == {2}


def test_a_retried_job_whose_version_exists_finishes_without_training_again(
    sqlite_registry: AdapterRegistry,
) -> None:
    registry = sqlite_registry
    alice = add_user(registry.database, "alice")
    job_id = queue_job(registry, alice)
    # An earlier attempt registered this job's version, then died.
    earlier = registry.register_candidate(
        random_lora(registry.base_spec(MODEL).shapes, base_model_id=MODEL),
        kind=AdapterKind.SPECIALIST,
        user_id=alice,
        eval_metrics={"promote": True},
        job_id=job_id,
    )

    make_worker(registry).run_one()

    state, error, kinds = job_state(registry, job_id)
    assert (state, error) == (JobState.SUCCEEDED, None)
    assert kinds == ["resumed", "promoted"]
    [version] = versions_of(registry, alice)
    assert version.id == earlier.id and version.state is AdapterState.ACTIVE


def test_a_version_promoted_by_hand_meanwhile_is_not_replaced_by_the_job(
    sqlite_registry: AdapterRegistry,
) -> None:
    """The job's candidate was judged against the version active when it started;
    an admin's promotion since then stands."""
    registry = sqlite_registry
    alice = add_user(registry.database, "alice")
    job_id = queue_job(registry, alice)
    shapes = registry.base_spec(MODEL).shapes
    earlier = registry.register_candidate(
        random_lora(shapes, base_model_id=MODEL, seed=1),
        kind=AdapterKind.SPECIALIST,
        user_id=alice,
        eval_metrics={"promote": True},
        job_id=job_id,
    )
    by_hand = registry.register_candidate(
        random_lora(shapes, base_model_id=MODEL, seed=2),
        kind=AdapterKind.SPECIALIST,
        user_id=alice,
    )
    registry.promote(version_id=by_hand.id, by=Decider.ADMIN)

    make_worker(registry).run_one()

    state, _, kinds = job_state(registry, job_id)
    assert state is JobState.SUCCEEDED and kinds == ["resumed", "not_promoted"]
    with registry.database.session() as session:
        job = JobRepository(session).get(job_id=job_id)
    # The job says what became of its version, and why.
    assert job.outcome == "held_back" and job.outcome_reason is not None
    assert f"the active version of {by_hand.adapter_id} is {by_hand.id}" in job.outcome_reason
    states = {v.id: v.state for v in versions_of(registry, alice)}
    assert states == {by_hand.id: AdapterState.ACTIVE, earlier.id: AdapterState.CANDIDATE}


def start_a_long_job(registry: AdapterRegistry) -> tuple[str, str, threading.Thread]:
    """A user's job running in a worker thread, past its first training step."""
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(40))
    job_id = queue_job(registry, alice, epochs=5)
    run = threading.Thread(target=make_worker(registry).run_one)
    run.start()
    wait_for_event(registry, job_id, "progress")
    return alice, job_id, run


def wait_for_event(registry: AdapterRegistry, job_id: str, kind: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kind in job_state(registry, job_id)[2]:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event for {job_id} within {timeout} s")


def expire_lease(registry: AdapterRegistry, job_id: str) -> None:
    with registry.database.session() as session:
        job = session.get(FineTuneJob, job_id)
        assert job is not None
        job.lease_expires_at = utc_now() - timedelta(seconds=1)


def test_deleting_the_user_mid_run_stops_the_job_and_leaves_nothing(
    sqlite_registry: AdapterRegistry,
) -> None:
    registry = sqlite_registry
    alice, job_id, run = start_a_long_job(registry)
    with registry.database.session() as session:
        # A user's data goes with them, their jobs and experts included.
        session.delete(session.get(User, alice))
    run.join(timeout=60)

    assert not run.is_alive()  # stopped at the next heartbeat, without an error
    with registry.database.session() as session:
        assert session.get(FineTuneJob, job_id) is None
        assert session.scalars(select(Adapter).where(Adapter.user_id == alice)).all() == []

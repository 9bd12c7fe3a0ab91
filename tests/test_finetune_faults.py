"""A real ``tailor worker`` process killed with SIGKILL: the job is re-leased and
finishes once, with exactly one version, and no version points at missing weights."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.registry import AdapterRegistry
from finetune.crash_points import ENV_VARIABLE, WEIGHTS_WRITTEN
from storage.repositories import JobRepository
from storage.tables import AdapterState, JobState
from tests.finetune_fixtures import add_examples, add_user, pirate_conversations, registry_on
from tests.server import TAILOR, prepared_model_store, tailor_env
from tests.test_finetune_worker import (
    job_state,
    make_worker,
    queue_job,
    versions_of,
    wait_for_event,
)

# Each test starts `tailor worker` processes and kills one mid-job.
pytestmark = pytest.mark.e2e

LEASE_SECONDS = 3


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def registry(data_dir: Path) -> Iterator[AdapterRegistry]:
    with registry_on(f"sqlite:///{data_dir / 'tailor.db'}", data_dir) as found:
        yield found


def start_worker(data_dir: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_DATABASE_URL": f"sqlite:///{data_dir / 'tailor.db'}",
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_FINETUNE_DEVICE": "cpu",
        "TAILOR_FINETUNE_LEASE_SECONDS": str(LEASE_SECONDS),
        "TAILOR_FINETUNE_HEARTBEAT_SECONDS": "0.5",
        "TAILOR_FINETUNE_RETRY_BASE_SECONDS": "0",
        "TAILOR_FINETUNE_TRIGGER_NEW_EXAMPLES": "0",
        "TAILOR_FINETUNE_GENERIC_TEXTS": "6",
        "TAILOR_FINETUNE_BATCH_SIZE": "4",
        # No factual probes: they are asked before the weights are written, and a
        # crash, not the evaluation, is what these tests are about (the probes'
        # answers took about half of the doomed worker's time).
        "TAILOR_FINETUNE_FACTUAL_PROBES": "0",
        **extra,
    }
    return subprocess.Popen(
        [TAILOR, "worker", "--name", "doomed", "--once"],
        env=tailor_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def finish_with_another_worker(registry: AdapterRegistry, job_id: str) -> None:
    """Once the dead worker's lease runs out, a second worker re-leases the job."""
    survivor = make_worker(registry, "survivor")
    deadline = time.monotonic() + 4 * LEASE_SECONDS + 30
    while survivor.run_one() != job_id:
        assert time.monotonic() < deadline, "the job was never re-leased"
        time.sleep(0.5)


def test_a_worker_killed_mid_training_leaves_a_job_that_finishes_once(
    registry: AdapterRegistry, data_dir: Path
) -> None:
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(12))
    job_id = queue_job(registry, alice, epochs=3)
    worker = start_worker(data_dir)
    try:
        wait_for_event(registry, job_id, "progress")
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    assert job_state(registry, job_id)[0] is JobState.RUNNING  # nobody said otherwise

    finish_with_another_worker(registry, job_id)

    state, error, _ = job_state(registry, job_id)
    assert (state, error) == (JobState.SUCCEEDED, None)
    with registry.database.session() as session:
        assert JobRepository(session).get(job_id=job_id).attempt == 2
    [version] = versions_of(registry, alice)
    assert version.job_id == job_id


def test_a_worker_killed_between_weights_and_commit_leaves_no_version(
    registry: AdapterRegistry, data_dir: Path
) -> None:
    alice = add_user(registry.database, "alice")
    add_examples(registry.database, alice, pirate_conversations(12))
    job_id = queue_job(registry, alice)
    worker = start_worker(data_dir, **{ENV_VARIABLE: WEIGHTS_WRITTEN})
    assert worker.wait(timeout=600) == -signal.SIGKILL
    blobs_before = set((data_dir / "blobs").rglob("*"))
    assert any(p.is_file() for p in blobs_before)  # the weights were written...
    assert versions_of(registry, alice) == []  # ...but no version was committed

    finish_with_another_worker(registry, job_id)

    [version] = versions_of(registry, alice)
    assert version.state is AdapterState.ACTIVE and version.sha256 is not None
    assert registry.blobs.exists(version.sha256)
    assert job_state(registry, job_id)[0] is JobState.SUCCEEDED

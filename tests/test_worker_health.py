"""The fine-tune worker's liveness signal: a heartbeat file touched at every poll and
lease renewal, and `tailor worker --check-health`, the probe that reads its age."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from adapters.registry import AdapterRegistry
from finetune.health import Heartbeat, heartbeat_age, heartbeat_problem
from finetune.queue import ClaimedJob, JobQueue
from finetune.worker import FinetuneWorker, LeaseKeeper, WorkerConfig, worker_from_settings
from serving.settings import load_settings
from storage import migrate
from storage.database import Database
from storage.repositories import JobRepository
from storage.tables import AdapterKind
from tests.server import REPO_ROOT, run_tailor
from tests.test_repositories import add_base_model, add_user

MODEL = "tiny-1m"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    # SQLite only: the heartbeat never touches the database's own behaviour.
    db = Database(f"sqlite:///{tmp_path / 'tailor.db'}")
    migrate.upgrade(db)
    add_base_model(db, MODEL)
    yield db
    db.dispose()


def make_stale(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_age_of_a_heartbeat_says_whether_the_worker_is_alive(tmp_path: Path) -> None:
    path = tmp_path / "run" / "heartbeat"
    assert heartbeat_age(path) is None
    assert "has not started" in str(heartbeat_problem(path, 60))
    Heartbeat(path).beat()  # makes the directory too
    age = heartbeat_age(path)
    assert age is not None and age < 5
    assert heartbeat_problem(path, 60) is None
    make_stale(path, 100)
    assert "100 s old (limit 60 s)" in str(heartbeat_problem(path, 60))
    assert heartbeat_problem(path, 120) is None


def test_a_heartbeat_that_cannot_be_written_does_not_stop_the_worker(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    heartbeat = Heartbeat(blocker / "heartbeat")
    heartbeat.beat()
    heartbeat.beat()  # logged once, never raised
    assert "has not started polling" in str(heartbeat_problem(blocker / "heartbeat", 60))


def test_the_idle_worker_loop_keeps_its_heartbeat_fresh(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    config = WorkerConfig(
        name="w", model_store_dir=tmp_path, poll_seconds=0.02, heartbeat_file=path
    )
    registry = cast(AdapterRegistry, SimpleNamespace(database=database))
    worker = FinetuneWorker(JobQueue(database), registry, config)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(path.exists)
        make_stale(path, 1000)
        wait_for(lambda: (heartbeat_age(path) or 1000) < 5)  # touched again by the next poll
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def claimed_job(database: Database, queue: JobQueue) -> ClaimedJob:
    with database.session() as session:
        JobRepository(session).create(
            kind=AdapterKind.SPECIALIST, base_model_id=MODEL, user_id=add_user(database, "u")
        )
    claim = queue.claim("w")
    assert claim is not None
    return claim


def test_a_running_job_beats_at_every_lease_renewal_and_only_then(
    database: Database, tmp_path: Path
) -> None:
    path = tmp_path / "heartbeat"
    queue = JobQueue(database, lease_seconds=30)
    claim = claimed_job(database, queue)
    with LeaseKeeper(queue, claim, 0.02, on_renewed=Heartbeat(path).beat):
        wait_for(path.exists)
        make_stale(path, 1000)
        wait_for(lambda: (heartbeat_age(path) or 1000) < 5)

    # Renewals that fail (the database is away) do not count as alive.
    attempts: list[ClaimedJob] = []
    retried = threading.Event()

    class Unreachable:
        def heartbeat(self, claim: ClaimedJob) -> bool:
            attempts.append(claim)
            if len(attempts) >= 3:
                retried.set()
            raise OSError("connection refused")

    beats: list[float] = []
    keeper = LeaseKeeper(
        cast(JobQueue, Unreachable()), claim, 0.01, on_renewed=lambda: beats.append(1)
    )
    with keeper:
        assert retried.wait(10), "the keeper stopped trying to renew"
    assert beats == []


def test_the_settings_name_the_heartbeat_file(database: Database, tmp_path: Path) -> None:
    settings = load_settings(
        storage={"data_dir": tmp_path, "model_store": tmp_path},
        finetune={"heartbeat_file": tmp_path / "hb"},
    )
    registry = cast(AdapterRegistry, SimpleNamespace(database=database))
    worker = worker_from_settings(
        settings.finetune, registry, model_store_dir=settings.storage.model_store_dir, name="w"
    )
    assert worker.config.heartbeat_file == tmp_path / "hb"
    assert load_settings().finetune.heartbeat_file is None  # off unless asked for


@pytest.mark.slow
def test_the_check_health_command_is_the_probe(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    env = {"TAILOR_FINETUNE_HEARTBEAT_FILE": str(path), "TAILOR_DATA_DIR": str(tmp_path)}

    def check(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_tailor(["worker", "--check-health", *args], {**env, **extra}, timeout=60)

    missing = check()
    assert missing.returncode == 1 and "has not started polling" in missing.stderr
    Heartbeat(path).beat()
    fresh = check()
    assert fresh.returncode == 0, fresh.stderr
    # Stale after a whole lease (TAILOR_FINETUNE_LEASE_SECONDS) unless --max-age says more.
    make_stale(path, 61)
    assert check().returncode == 1
    assert check(TAILOR_FINETUNE_LEASE_SECONDS="120").returncode == 0
    assert check("--max-age", "300").returncode == 0
    assert check("--max-age", "30").returncode == 1
    unset = run_tailor(["worker", "--check-health"], {"TAILOR_DATA_DIR": str(tmp_path)})
    assert unset.returncode == 2 and "TAILOR_FINETUNE_HEARTBEAT_FILE is unset" in unset.stderr
    broken = check(TAILOR_FINETUNE_LEASE_SECONDS="soon")
    assert broken.returncode == 2 and "TAILOR_FINETUNE_LEASE_SECONDS" in broken.stderr


def test_the_probe_does_not_load_torch(tmp_path: Path) -> None:
    # It runs every few seconds in every worker pod: it must stay cheap.
    path = tmp_path / "heartbeat"
    Heartbeat(path).beat()
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from serving.cli import app\n"
        "result = CliRunner().invoke(app, ['worker', '--check-health'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'the probe imported torch'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env["TAILOR_FINETUNE_HEARTBEAT_FILE"] = str(path)
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

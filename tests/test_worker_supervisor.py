"""The embedded mode's fine-tune workers are supervised: a worker that dies is
reaped (no zombie), restarted with a backoff, reported by ``/readyz`` and
``/metrics``, and the job it held goes back to the queue when its lease runs
out, whether or not any worker is claiming.

The supervisor's tests run tiny Python children instead of real workers, and
move its clock by hand, so that the backoff is checked at exact instants.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from finetune.errors import LeaseLost
from finetune.lease_sweeper import LeaseSweeper
from finetune.queue import LOST_WORKER_ERROR, ExpiredLease, JobQueue
from serving.app import create_app
from serving.runtime import ModelRuntime
from serving.services import Services
from serving.settings import load_settings
from serving.worker_supervisor import RestartPolicy, WorkerSpec, WorkerState, WorkerSupervisor
from storage.clock import utc_now
from storage.database import Database
from storage.tables import JobState
from tests.clock import FakeClock
from tests.finetune_fixtures import MODEL as FINETUNE_MODEL
from tests.finetune_fixtures import pirate_conversations
from tests.server import CPU_WORKER_SETTINGS, running_server, served_env
from tests.test_finetune_queue import MODEL, expire_lease, job, make_runnable, submit
from tests.test_repositories import add_base_model, add_user

# Touches $HEARTBEAT (as a worker's loop does) and otherwise sleeps.
BEATING = (
    "import os, signal, sys, time\n"
    "if sys.argv[1:] == ['ignore-sigterm']:\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "path = os.environ['HEARTBEAT']\n"
    "while True:\n"
    "    open(path, 'a').close()\n"
    "    os.utime(path)\n"
    "    time.sleep(0.05)\n"
)
# Beats once, then hangs.
HANGING = "import os, time\nopen(os.environ['HEARTBEAT'], 'a').close()\ntime.sleep(600)\n"
CRASHING = "import sys; sys.exit(3)"


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def beating_worker(tmp_path: Path, name: str, *args: str, script: str = BEATING) -> WorkerSpec:
    heartbeat = tmp_path / f"{name}.heartbeat"
    return WorkerSpec(
        name=name,
        command=(sys.executable, "-c", script, *args),
        env={**os.environ, "HEARTBEAT": str(heartbeat)},
        heartbeat_file=heartbeat,
    )


def only(supervisor: WorkerSupervisor) -> WorkerState:
    (state,) = supervisor.states()
    return state


def assert_reaped(pid: int) -> None:
    # A zombie would be reaped here, and a running child answer (0, 0): only a
    # child already waited for raises.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@contextmanager
def supervising(
    specs: Sequence[WorkerSpec], clock: FakeClock, **options: Any
) -> Iterator[WorkerSupervisor]:
    options.setdefault("heartbeat_max_age_seconds", 30.0)
    supervisor = WorkerSupervisor(specs, poll_seconds=0.02, clock=clock, **options)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


# The supervisor ---------------------------------------------------------------------


def test_a_killed_worker_is_reaped_and_restarted_after_a_doubling_backoff(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving.worker_supervisor")
    with supervising([beating_worker(tmp_path, "worker-0")], clock) as supervisor:
        wait_for(lambda: only(supervisor).last_heartbeat_at is not None)
        first = only(supervisor)
        assert first.alive and first.problem is None and first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: not only(supervisor).alive)
        assert_reaped(first.pid)
        dead = only(supervisor)
        assert (dead.pid, dead.last_exit_code, dead.restarts) == (None, -signal.SIGKILL, 0)
        assert dead.problem == (
            "worker-0 died (signal 9, SIGKILL) 0 s ago; restarting in 1 s (restart 1)"
        )
        assert (
            f"fine-tune worker worker-0 (pid {first.pid}) exited after 0 s (signal 9, SIGKILL); "
            "restarting in 1 s (restart 1)"
        ) in caplog.text
        supervisor.poll()  # the clock has not moved: not yet
        assert not only(supervisor).alive
        clock.advance(1)
        wait_for(lambda: only(supervisor).alive)
        second = only(supervisor)
        assert second.pid not in (None, first.pid) and second.restarts == 1
        wait_for(lambda: only(supervisor).problem is None)  # beating again

        # Dead again at once: twice the delay.
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)
        wait_for(lambda: not only(supervisor).alive)
        assert_reaped(second.pid)
        assert str(only(supervisor).problem).endswith("restarting in 2 s (restart 2)")
        clock.advance(1)
        supervisor.poll()
        assert not only(supervisor).alive
        clock.advance(1)
        wait_for(lambda: only(supervisor).alive)
        third = only(supervisor)
        wait_for(lambda: only(supervisor).problem is None)

        # After a minute up, the next death starts from the first delay again.
        clock.advance(60)
        assert third.pid is not None
        os.kill(third.pid, signal.SIGKILL)
        wait_for(lambda: not only(supervisor).alive)
        assert_reaped(third.pid)
        assert str(only(supervisor).problem).endswith("restarting in 1 s (restart 3)")


def test_a_crash_looping_worker_backs_off_to_a_minute_and_says_so(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    spec = WorkerSpec(name="worker-0", command=(sys.executable, "-c", CRASHING))
    delays = []
    with supervising([spec], clock) as supervisor:
        for exits in range(1, 8):

            def exited(exits: int = exits) -> bool:
                state = only(supervisor)
                return not state.alive and state.restarts == exits - 1

            wait_for(exited)
            state = only(supervisor)
            assert state.last_exit_code == 3
            problem = str(state.problem)
            if exits < 5:
                assert problem.startswith("worker-0 died (exit code 3) 0 s ago; restarting in")
                assert not state.crash_looping
            else:
                assert problem.startswith("worker-0 crash-looping: ")
                assert " exits in 60 s, the last (exit code 3) 0 s ago; restarting in" in problem
                assert state.crash_looping
            delay = float(problem.split("restarting in ")[1].split(" s")[0])
            delays.append(delay)
            supervisor.poll()
            assert not only(supervisor).alive  # nothing before its time
            clock.advance(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 60]
    assert any(
        record.levelno == logging.ERROR and "is crash-looping" in record.getMessage()
        for record in caplog.records
    )
    assert RestartPolicy().delay(1000) == 60


def test_stop_ends_every_worker_for_good_and_leaves_no_zombie(
    tmp_path: Path, clock: FakeClock
) -> None:
    specs = [
        beating_worker(tmp_path, "worker-0"),
        beating_worker(tmp_path, "worker-1", "ignore-sigterm"),
    ]
    supervisor = WorkerSupervisor(
        specs,
        heartbeat_max_age_seconds=30,
        poll_seconds=0.02,
        stop_timeout_seconds=1,
        clock=clock,
    )
    supervisor.start()
    try:
        # Beating means running, SIGTERM already ignored where asked.
        wait_for(lambda: all(s.last_heartbeat_at is not None for s in supervisor.states()))
        pids = [s.pid for s in supervisor.states()]
    finally:
        supervisor.stop()
    stopped = supervisor.states()
    assert [(s.alive, s.pid, s.last_exit_code, s.problem) for s in stopped] == [
        (False, None, -signal.SIGTERM, "worker-0 stopped"),
        (False, None, -signal.SIGKILL, "worker-1 stopped"),  # killed after the timeout
    ]
    for pid in pids:
        assert pid is not None
        assert_reaped(pid)
    clock.advance(3600)
    supervisor.poll()
    assert [(s.alive, s.restarts) for s in supervisor.states()] == [(False, 0), (False, 0)]
    assert "worker-supervisor" not in {thread.name for thread in threading.enumerate()}


def test_a_silent_worker_is_reported_but_left_running(tmp_path: Path, clock: FakeClock) -> None:
    hanging = beating_worker(tmp_path, "worker-0", script=HANGING)
    silent = beating_worker(tmp_path, "worker-1", script="import time; time.sleep(600)")
    assert silent.heartbeat_file is not None and hanging.heartbeat_file is not None
    silent.heartbeat_file.touch()  # left by an earlier process: it vouches for nobody
    with supervising([hanging, silent], clock) as supervisor:
        wait_for(lambda: supervisor.states()[0].last_heartbeat_at is not None)
        then = time.time() - 100
        os.utime(hanging.heartbeat_file, (then, then))
        stuck, starting = supervisor.states()
        assert stuck.alive and stuck.problem == (
            f"worker-0 (pid {stuck.pid}) is alive but silent: "
            "the last heartbeat is 100 s old (limit 30 s)"
        )
        assert starting.alive and starting.last_heartbeat_at is None
        assert starting.problem == f"worker-1 (pid {starting.pid}) starting: no heartbeat yet"
        supervisor.poll()
        assert [s.pid for s in supervisor.states()] == [stuck.pid, starting.pid]


def test_a_worker_that_cannot_start_is_retried_with_a_backoff(
    tmp_path: Path, clock: FakeClock
) -> None:
    spec = WorkerSpec(name="worker-0", command=(str(tmp_path / "no-such-program"),))
    with supervising([spec], clock) as supervisor:
        state = only(supervisor)
        assert not state.alive and state.last_exit_code is None
        assert str(state.problem).startswith("worker-0 died (could not start: ")
        assert str(state.problem).endswith("restarting in 1 s (restart 1)")
        clock.advance(1)
        wait_for(lambda: str(only(supervisor).problem).endswith("restarting in 2 s (restart 2)"))


# What the server says about its workers -----------------------------------------------


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {series} in /metrics")


def test_readyz_and_metrics_name_a_dead_worker_without_refusing_traffic(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = tmp_path / "models"
    (store / MODEL).mkdir(parents=True)
    settings = load_settings(
        storage={
            "data_dir": tmp_path,
            "model_store": store,
            "database_url": f"sqlite:///{tmp_path / 'tailor.db'}",
        }
    )
    services = Services.open(settings)
    add_base_model(services.database, MODEL)
    try:
        # No runtime.workers (Ray, or workers run elsewhere): no workers check.
        bare = ModelRuntime(services)
        bare.loaded.set()  # the engines are not under test: nothing is loaded
        checks = TestClient(create_app(services, runtime=bare)).get("/readyz").json()["checks"]
        assert "workers" not in checks

        with supervising([beating_worker(tmp_path, "worker-0")], clock) as supervisor:
            runtime = ModelRuntime(services, workers=supervisor)
            runtime.loaded.set()
            # Without the lifespan (no `with`): no model load is started.
            client = TestClient(create_app(services, runtime=runtime))
            wait_for(lambda: only(supervisor).problem is None)
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["workers"] == "ok"
            exported = client.get("/metrics").text
            assert metric(exported, 'tailor_finetune_workers{state="alive"}') == 1
            assert metric(exported, 'tailor_finetune_workers{state="dead"}') == 0
            restarts = 'tailor_finetune_worker_restarts_total{worker="worker-0"}'
            assert metric(exported, restarts) == 0

            pid = only(supervisor).pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not only(supervisor).alive)
            down = client.get("/readyz")
            # Chat traffic does not need the worker: still ready, but it says why not all is well.
            assert down.status_code == 200 and down.json()["status"] == "ready"
            assert down.json()["checks"]["workers"] == (
                "worker-0 died (signal 9, SIGKILL) 0 s ago; restarting in 1 s (restart 1)"
            )
            exported = client.get("/metrics").text
            assert metric(exported, 'tailor_finetune_workers{state="alive"}') == 0
            assert metric(exported, 'tailor_finetune_workers{state="dead"}') == 1

            clock.advance(1)
            wait_for(lambda: only(supervisor).alive and only(supervisor).problem is None)
            assert client.get("/readyz").json()["checks"]["workers"] == "ok"
            assert metric(client.get("/metrics").text, restarts) == 1
    finally:
        services.close()


# The leases of dead workers ------------------------------------------------------------


def test_an_expired_lease_is_swept_without_any_claim(database: Database) -> None:
    add_base_model(database, MODEL)
    queue = JobQueue(database, lease_seconds=30)
    lost = submit(database, add_user(database, "lost"), max_attempts=2)
    held = submit(database, add_user(database, "held"))
    dead, alive = queue.claim("dead"), queue.claim("alive")
    assert dead is not None and alive is not None
    assert (dead.job_id, alive.job_id) == (lost, held)
    assert queue.requeue_expired() == []  # no lease has run out

    expire_lease(database, lost)
    assert queue.requeue_expired() == [ExpiredLease(job_id=lost, attempt=1, state=JobState.QUEUED)]
    row = job(database, lost)
    assert (row.state, row.attempt, row.error) == (JobState.QUEUED, 1, LOST_WORKER_ERROR)
    assert row.lease_owner is None and row.lease_expires_at is None
    assert row.run_after > utc_now()  # after a backoff, as when a claim sweeps
    with pytest.raises(LeaseLost):
        queue.heartbeat(dead)
    assert job(database, held).state is JobState.RUNNING  # a live lease is left alone
    queue.heartbeat(alive)

    # Lost on its last attempt: the job fails, saying so.
    make_runnable(database, lost)
    last = queue.claim("again")
    assert last is not None and (last.job_id, last.attempt) == (lost, 2)
    expire_lease(database, lost)
    assert queue.requeue_expired() == [ExpiredLease(job_id=lost, attempt=2, state=JobState.FAILED)]
    row = job(database, lost)
    assert row.state is JobState.FAILED and row.finished_at is not None
    assert row.error == f"{LOST_WORKER_ERROR}, on its last attempt (2 of 2)"
    assert queue.requeue_expired() == []


def test_the_sweeper_frees_a_dead_workers_job_while_nobody_claims(database: Database) -> None:
    add_base_model(database, MODEL)
    queue = JobQueue(database, lease_seconds=30)
    job_id = submit(database, add_user(database, "orphan"))
    assert queue.claim("dead") is not None
    expire_lease(database, job_id)
    sweeper = LeaseSweeper(queue, interval_seconds=0.05)
    sweeper.start()
    try:
        wait_for(lambda: job(database, job_id).state is JobState.QUEUED)
    finally:
        sweeper.stop()
    assert job(database, job_id).error == LOST_WORKER_ERROR


# End to end ----------------------------------------------------------------------------

ADMIN_KEY = "admin-" + secrets.token_hex(8)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid; None once it is gone (reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces: split after it.
    state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
    return state, int(parent)


def worker_children(server_pid: int) -> list[int]:
    """The live ``tailor worker`` children of the server (psutil-free /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        stat = _proc_stat(int(entry.name))
        if (
            stat is not None
            and stat[1] == server_pid
            and stat[0] != "Z"
            and b"serving.cli\0worker\0" in command
        ):
            found.append(int(entry.name))
    return found


def until(fetch: Callable[[], Any], accept: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last seen: {value!r}"
        time.sleep(0.1)


@pytest.mark.e2e
@pytest.mark.slow
def test_tailor_serve_restarts_a_killed_worker_and_frees_its_job(tmp_path: Path) -> None:
    env = served_env(
        tmp_path,
        ADMIN_KEY,
        **CPU_WORKER_SETTINGS,
        TAILOR_MODELS=f'["{FINETUNE_MODEL}"]',
        TAILOR_FINETUNE_BATCH_SIZE="4",
        # A lost job is freed a few seconds after its worker died.
        TAILOR_FINETUNE_LEASE_SECONDS="5",
    )
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:

        def workers_check() -> str:
            response = http.get("/readyz")
            # Ready throughout: a fine-tune worker serves no request.
            assert response.status_code == 200, response.text
            check: str = response.json()["checks"]["workers"]
            return check

        until(workers_check, lambda check: check == "ok", timeout=60)
        (worker,) = worker_children(server.process.pid)

        # A job for the worker to hold when it dies.
        user = http.post("/admin/users", json={"name": "pirate"}, headers=bearer(ADMIN_KEY))
        me = bearer(user.json()["api_key"])
        examples = [{"messages": m} for m in pirate_conversations(14)]
        assert http.post("/v1/examples", json={"examples": examples}, headers=me).is_success
        request = {"model": FINETUNE_MODEL, "hyperparameters": {"epochs": 2, "rank": 8}}
        job_id = http.post("/v1/fine-tunes", json=request, headers=me).json()["id"]

        def fine_tune() -> dict[str, Any]:
            found: dict[str, Any] = http.get(f"/v1/fine-tunes/{job_id}", headers=me).json()
            return found

        until(fine_tune, lambda job: job["status"] == "running", timeout=30)

        os.kill(worker, signal.SIGKILL)
        down = until(workers_check, lambda check: check != "ok", timeout=10)
        assert down.startswith("worker-0") and "signal 9, SIGKILL" in down, down
        # Reaped: gone from /proc, not left a zombie.
        until(lambda: _proc_stat(worker), lambda stat: stat is None, timeout=10)

        # The job is back in the queue when its lease runs out, counted as a lost attempt.
        freed = until(fine_tune, lambda job: job["status"] != "running", timeout=30)
        assert (freed["status"], freed["attempt"], freed["error"]) == (
            "queued",
            1,
            LOST_WORKER_ERROR,
        )

        until(workers_check, lambda check: check == "ok", timeout=60)
        (restarted,) = worker_children(server.process.pid)
        assert restarted != worker
        exported = http.get("/metrics").text
        assert metric(exported, 'tailor_finetune_workers{state="alive"}') == 1
        assert metric(exported, 'tailor_finetune_worker_restarts_total{worker="worker-0"}') == 1
        # ... and the restarted worker takes it up again.
        until(fine_tune, lambda job: job["attempt"] == 2, timeout=60)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}

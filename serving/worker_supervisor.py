"""Keeps the embedded mode's fine-tune worker processes running, and says how they are.

``tailor serve`` runs ``TAILOR_FINETUNE_WORKERS`` ``tailor worker`` children. A
child that dies (a crash, the OOM killer, ``kill -9``) must be reaped, or it
stays a zombie, and started again, or queued jobs wait for a server restart;
one that dies again at once must not be restarted in a tight loop, nor hidden.

Invariants:

- Only this module waits on the children, so every exited child is reaped
  within one poll (``poll_seconds``) of its exit.
- A dead worker is started again after a delay that doubles with each exit in
  a row (``RestartPolicy``: 1 s, 2 s, 4 s ... at most 60 s); a worker that
  stayed up ``stable_after_seconds`` starts from the first delay again. A
  worker that exited ``crash_loop_exits`` times within the window is reported
  as crash-looping; it keeps being restarted at the longest delays.
- Only the supervisor signals the children (each runs in its own process
  group, out of reach of the terminal's Ctrl-C).
- Once ``stop`` has begun, nothing is started again: every child gets SIGTERM
  (the worker hands its job back to the queue), then SIGKILL after
  ``stop_timeout_seconds``, and is reaped.
- Each worker may have its own heartbeat file (``finetune.health``), removed
  before each start, so that a beat always belongs to the running process. A
  worker alive but silent for longer than ``heartbeat_max_age_seconds`` is
  reported, not killed: a worker that cannot renew its leases because the
  database is away is not cured by a restart, and one that is truly hung loses
  its job when the lease runs out anyway.

What a lost worker leaves behind (its job's lease) is not handled here but by
the job queue (``finetune.lease_sweeper``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finetune.health import heartbeat_age

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """One supervised worker: how to start it, and where it beats."""

    name: str
    command: tuple[str, ...]
    # The child's whole environment; None: this process's.
    env: Mapping[str, str] | None = None
    heartbeat_file: Path | None = None


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    # Up this long, the worker's next exit starts the backoff from the beginning.
    stable_after_seconds: float = 60.0
    # This many exits within the window: crash-looping.
    crash_loop_exits: int = 5
    crash_loop_window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_delay_seconds <= self.max_delay_seconds:
            raise ValueError("need 0 < initial_delay_seconds <= max_delay_seconds")
        if self.stable_after_seconds <= 0 or self.crash_loop_window_seconds <= 0:
            raise ValueError("stable_after_seconds and crash_loop_window_seconds must be positive")
        if self.crash_loop_exits < 1:
            raise ValueError("crash_loop_exits must be at least 1")

    def delay(self, exits_in_a_row: int) -> float:
        """Seconds before the start that follows the ``exits_in_a_row``-th exit in a row."""
        doublings = min(max(exits_in_a_row - 1, 0), 32)
        return min(self.initial_delay_seconds * 2.0**doublings, self.max_delay_seconds)


@dataclass(frozen=True)
class WorkerState:
    """A snapshot of one worker, for ``/readyz``, ``/metrics`` and tests."""

    name: str
    pid: int | None  # of the running process; None while it is dead
    alive: bool
    restarts: int  # starts after the first
    # subprocess's convention: negative when a signal ended the process; None if
    # it never ran or could not be started.
    last_exit_code: int | None
    last_started_at: float | None  # time.time() of the last start
    # time.time() of the running process's last heartbeat; None: none yet, or no file.
    last_heartbeat_at: float | None
    crash_looping: bool
    problem: str | None  # None when all is well


@dataclass
class _Worker:
    spec: WorkerSpec
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits_in_a_row: int = 0
    exit_times: deque[float] = field(default_factory=deque)
    last_exit_code: int | None = None
    last_exit: str | None = None  # "exit code 3", "signal 9, SIGKILL", "could not start: ..."
    started_at: float | None = None  # supervisor clock
    started_wall: float | None = None  # time.time(), to compare with the heartbeat's mtime
    exited_at: float | None = None  # supervisor clock
    restart_at: float | None = None  # supervisor clock; None while running or stopped


def describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode}, {name}"


class WorkerSupervisor:
    """Starts the workers, restarts those that die, and stops them all on ``stop``."""

    def __init__(
        self,
        workers: Sequence[WorkerSpec],
        *,
        policy: RestartPolicy | None = None,
        heartbeat_max_age_seconds: float | None = None,
        poll_seconds: float = 0.5,
        stop_timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [spec.name for spec in workers]
        if len(set(names)) != len(names):
            raise ValueError(f"worker names must be unique: {names}")
        if poll_seconds <= 0 or stop_timeout_seconds < 0:
            raise ValueError("poll_seconds must be positive, stop_timeout_seconds not negative")
        self.policy = policy or RestartPolicy()
        self.heartbeat_max_age_seconds = heartbeat_max_age_seconds
        self._workers = [_Worker(spec) for spec in workers]
        self._poll_seconds = poll_seconds
        self._stop_timeout = stop_timeout_seconds
        self._clock = clock
        # Guards every _Worker; held while a child is started or reaped.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # Life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker and the thread that watches them."""
        if self._thread is not None or self._stopping.is_set():
            return
        with self._lock:
            now = self._clock()
            for worker in self._workers:
                self._spawn(worker, now)
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after the timeout) and reap it;
        nothing is restarted from now on."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        # From here poll() does nothing, so the processes are this method's alone;
        # the lock is not held while waiting, so that states() still answers.
        with self._lock:
            running = [w for w in self._workers if w.process is not None]
            for worker in self._workers:
                worker.restart_at = None
        for worker in running:
            assert worker.process is not None
            worker.process.terminate()
        # The timeout is real time even under a test's clock: it bounds a real wait.
        deadline = time.monotonic() + self._stop_timeout
        for worker in running:
            process = worker.process
            assert process is not None
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning(
                    "fine-tune worker %s (pid %d) ignored SIGTERM for %g s; killing it",
                    worker.spec.name,
                    process.pid,
                    self._stop_timeout,
                )
                process.kill()
                process.wait()
            with self._lock:
                worker.last_exit_code = process.returncode
                worker.last_exit = describe_exit(process.returncode)
                worker.exited_at = self._clock()
                worker.process = None
            log.info("fine-tune worker %s stopped (%s)", worker.spec.name, worker.last_exit)

    def poll(self) -> None:
        """Reap the workers that exited and start those whose delay is over.

        The supervisor's thread calls this every ``poll_seconds``.
        """
        with self._lock:
            if self._stopping.is_set():
                return
            now = self._clock()
            for worker in self._workers:
                process = worker.process
                if process is not None:
                    # poll() waits for the child without blocking: this is the reaping.
                    returncode = process.poll()
                    if returncode is not None:
                        self._exited(worker, returncode, describe_exit(returncode), now)
                elif worker.restart_at is not None and now >= worker.restart_at:
                    self._spawn(worker, now)

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll_seconds):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one surprise
                log.exception("supervising the fine-tune workers failed")

    def _spawn(self, worker: _Worker, now: float) -> None:
        spec = worker.spec
        if spec.heartbeat_file is not None:
            # A beat left by the previous process must not vouch for the next.
            try:
                spec.heartbeat_file.unlink(missing_ok=True)
            except OSError:
                log.exception("cannot remove the old heartbeat file %s", spec.heartbeat_file)
        worker.started_at = now
        worker.started_wall = time.time()
        worker.restart_at = None
        worker.starts += 1
        try:
            worker.process = subprocess.Popen(
                list(spec.command),
                env=dict(spec.env) if spec.env is not None else None,
                # Its own process group: Ctrl-C in the terminal reaches the server
                # alone, which then stops the workers itself (instead of seeing
                # them exit and restarting them while it shuts down).
                process_group=0,
            )
        except OSError as error:
            worker.process = None
            self._exited(worker, None, f"could not start: {error}", now)
            return
        if worker.starts > 1:
            log.info(
                "fine-tune worker %s restarted as pid %d (restart %d)",
                spec.name,
                worker.process.pid,
                worker.starts - 1,
            )

    def _exited(self, worker: _Worker, returncode: int | None, how: str, now: float) -> None:
        pid = worker.process.pid if worker.process is not None else None
        uptime = now - worker.started_at if worker.started_at is not None else 0.0
        worker.process = None
        worker.last_exit_code = returncode
        worker.last_exit = how
        worker.exited_at = now
        if uptime >= self.policy.stable_after_seconds:
            worker.exits_in_a_row = 0
        worker.exits_in_a_row += 1
        worker.exit_times.append(now)
        delay = self.policy.delay(worker.exits_in_a_row)
        worker.restart_at = now + delay
        crash_looping = self._crash_looping(worker, now)
        log.log(
            logging.ERROR if crash_looping else logging.WARNING,
            "fine-tune worker %s (pid %s) %s after %.0f s (%s); restarting in %.0f s (restart %d)",
            worker.spec.name,
            pid if pid is not None else "-",
            "is crash-looping: it exited" if crash_looping else "exited",
            uptime,
            how,
            delay,
            worker.starts,
        )

    def _crash_looping(self, worker: _Worker, now: float) -> bool:
        window = self.policy.crash_loop_window_seconds
        while worker.exit_times and worker.exit_times[0] < now - window:
            worker.exit_times.popleft()
        return len(worker.exit_times) >= self.policy.crash_loop_exits

    # What is known -------------------------------------------------------------------

    def states(self) -> list[WorkerState]:
        with self._lock:
            now = self._clock()
            return [self._state(worker, now) for worker in self._workers]

    def problems(self) -> list[str]:
        """One reason per worker that is not running and beating; empty when all are."""
        return [state.problem for state in self.states() if state.problem is not None]

    def _state(self, worker: _Worker, now: float) -> WorkerState:
        process = worker.process
        last_beat = self._last_beat(worker) if process is not None else None
        crash_looping = self._crash_looping(worker, now)
        return WorkerState(
            name=worker.spec.name,
            pid=process.pid if process is not None else None,
            alive=process is not None,
            restarts=max(worker.starts - 1, 0),
            last_exit_code=worker.last_exit_code,
            last_started_at=worker.started_wall,
            last_heartbeat_at=last_beat,
            crash_looping=crash_looping,
            problem=self._problem(worker, now, last_beat, crash_looping),
        )

    def _last_beat(self, worker: _Worker) -> float | None:
        path = worker.spec.heartbeat_file
        if path is None:
            return None
        wall = time.time()
        try:
            age = heartbeat_age(path, now=wall)
        except OSError:
            return None
        return None if age is None else wall - age

    def _problem(
        self, worker: _Worker, now: float, last_beat: float | None, crash_looping: bool
    ) -> str | None:
        name = worker.spec.name
        process = worker.process
        if process is None:
            if worker.restart_at is None:
                return f"{name} stopped" if worker.starts else f"{name} not started"
            ago = now - worker.exited_at if worker.exited_at is not None else 0.0
            wait = max(worker.restart_at - now, 0.0)
            if crash_looping:
                return (
                    f"{name} crash-looping: {len(worker.exit_times)} exits in "
                    f"{self.policy.crash_loop_window_seconds:g} s, the last ({worker.last_exit}) "
                    f"{ago:.0f} s ago; restarting in {wait:.0f} s (restart {worker.starts})"
                )
            return (
                f"{name} died ({worker.last_exit}) {ago:.0f} s ago; "
                f"restarting in {wait:.0f} s (restart {worker.starts})"
            )
        limit = self.heartbeat_max_age_seconds
        if worker.spec.heartbeat_file is None or limit is None:
            return None
        wall = time.time()
        after = ""
        if worker.starts > 1:
            after = f" (restart {worker.starts - 1}, after {worker.last_exit})"
        if last_beat is None:
            since = wall - (worker.started_wall or wall)
            if since > limit:
                return (
                    f"{name} (pid {process.pid}) has not beaten in the {since:.0f} s "
                    f"since it started (limit {limit:g} s){after}"
                )
            return f"{name} (pid {process.pid}) starting: no heartbeat yet{after}"
        age = wall - last_beat
        if age > limit:
            return (
                f"{name} (pid {process.pid}) is alive but silent: the last heartbeat is "
                f"{age:.0f} s old (limit {limit:g} s)"
            )
        return None

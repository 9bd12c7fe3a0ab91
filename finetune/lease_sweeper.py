"""Frees the jobs of dead workers even while no worker is claiming.

A job whose worker died stays ``running`` until someone ends its expired
lease. Workers do that before every claim, but when the only worker is dead
(crash-looping, or not restarted yet) nobody claims, and the job would look
``running`` for as long as that lasts. The server runs this sweeper beside
the API so that such a job is back in the queue (or ``failed``, with no
attempts left) within one sweep of its lease running out.

It only calls ``JobQueue.requeue_expired``, whose row locks make it safe to
run in any number of processes beside any number of workers.
"""

from __future__ import annotations

import logging
import threading

from finetune.queue import JobQueue

log = logging.getLogger(__name__)


def sweep_interval(lease_seconds: float) -> float:
    """A few sweeps per lease, so a job is freed soon after its lease ends, but
    never busier than once a second nor lazier than every 15 s."""
    return min(max(lease_seconds / 4, 1.0), 15.0)


class LeaseSweeper:
    """Calls ``queue.requeue_expired()`` every ``interval_seconds`` until ``stop``."""

    def __init__(self, queue: JobQueue, *, interval_seconds: float) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._queue = queue
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="lease-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def sweep(self) -> None:
        """One sweep; errors are logged, never raised (the database may be away)."""
        try:
            ended = self._queue.requeue_expired()
        except Exception:
            log.exception("sweeping the expired fine-tune leases failed")
            return
        for lease in ended:
            log.warning(
                "fine-tune job %s: attempt %d lost its worker (lease expired); now %s",
                lease.job_id,
                lease.attempt,
                lease.state.value,
            )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sweep()

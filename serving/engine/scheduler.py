"""Which waiting requests join the running batch, and when.

The scheduler owns the waiting queue. Admission is bounded (a full queue
refuses new work at once, ``EngineOverloaded``, which the API answers with
503) and ordered as UELLM's scheduler does: by latency objective, then by
predicted output length. Deadlines are compared in windows of
SLO_WINDOW_SECONDS, so that among requests due at about the same time the
shortest predicted answer goes first (it frees its row soonest), while a
request due clearly earlier is never passed by a shorter one due later.

Between two decode steps the model thread asks ``admit`` for the requests
that join: as many as the batch has room for and the prefill budget allows
(the prefill batch is padded to its longest prompt, so the budget bounds rows
x longest; the first request always fits). Requests cancelled or past their
deadline are dropped on the way, and each admitted request's adapter slots
are leased here: when every slot is busy (``SlotsExhausted``) the request goes
back into the queue, in its place, until running requests give slots back.

Invariants: a request taken from the queue either comes back from ``admit``
holding its lease, or has been ended through the ``Ends`` sink (finished
unstarted, or failed), or goes back into the queue; never two of these, and
never none, whatever fails. Every queue change happens under one condition
variable, which is also what the model thread sleeps on when idle.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from adapters.device.slot_cache import AdapterSlotCache, SlotLease
from adapters.errors import AdapterError, SlotsExhausted
from serving.engine.config import EngineConfig, EngineStats
from serving.engine.errors import EngineOverloaded, EngineStopped, RequestFailed
from serving.engine.requests import RequestHandle

logger = logging.getLogger(__name__)

SLO_WINDOW_SECONDS = 1.0


class Ends(Protocol):
    """Where the scheduler ends requests that never start (the output processor)."""

    def finish_unstarted(self, handle: RequestHandle, reason: str) -> None: ...

    def fail(
        self, handle: RequestHandle, error: Exception, cause: BaseException | None = None
    ) -> None: ...


@dataclass(order=True)
class Waiting:
    """A queued request, ordered by SLO window, predicted length, then arrival."""

    slo_window: float
    predicted_tokens: int
    order: int
    handle: RequestHandle = field(compare=False)

    @classmethod
    def of(cls, handle: RequestHandle, order: int) -> Waiting:
        request = handle.request
        due = request.slo_deadline if request.slo_deadline is not None else request.deadline
        window = math.inf if due is None else math.floor(due / SLO_WINDOW_SECONDS)
        length = request.predicted_tokens or request.params.max_tokens
        return cls(window, length, order, handle)


@dataclass(frozen=True)
class Admission:
    """A request that joins the batch now, with its adapter slots (None: no adapters)."""

    handle: RequestHandle
    lease: SlotLease | None


class Scheduler:
    def __init__(
        self,
        *,
        model_id: str,
        config: EngineConfig,
        stats: EngineStats,
        ends: Ends,
        slots: AdapterSlotCache | None = None,
    ) -> None:
        self.model_id = model_id
        self.config = config
        self.stats = stats
        self._ends = ends
        self._slots = slots
        self._waiting: list[Waiting] = []
        self._arrivals = itertools.count()
        self._wake = threading.Condition()
        self._open = False
        self._stopping = False

    # Lifecycle ------------------------------------------------------------------

    def open(self) -> None:
        """Start taking requests."""
        with self._wake:
            self._open = True

    def stop(self) -> None:
        """Refuse new requests and wake the model thread so that it ends."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()

    def wait_for_work(self, busy: bool) -> bool:
        """Sleep while there is nothing to do; False once the engine is stopping.

        ``busy``: the batch has running rows, so the model thread must go on.
        """
        with self._wake:
            while not self._stopping and not self._waiting and not busy:
                self._wake.wait()
            return not self._stopping

    # Submission -------------------------------------------------------------------

    def add(self, handle: RequestHandle) -> None:
        """Queue a request; raises ``EngineOverloaded`` or ``EngineStopped``."""
        with self._wake:
            if self._stopping or not self._open:
                raise EngineStopped(f"the engine of {self.model_id} is not running")
            if len(self._waiting) >= self.config.max_queue:
                self._drop_cancelled()
            if len(self._waiting) >= self.config.max_queue:
                raise EngineOverloaded(f"{self.model_id} has {len(self._waiting)} requests waiting")
            heapq.heappush(self._waiting, Waiting.of(handle, next(self._arrivals)))
            self.stats.waiting = len(self._waiting)
            self._wake.notify()

    def _drop_cancelled(self) -> None:
        """Free queue places held by requests cancelled before they started."""
        cancelled = [w for w in self._waiting if w.handle.cancelled]
        if not cancelled:
            return
        self._waiting = [w for w in self._waiting if not w.handle.cancelled]
        heapq.heapify(self._waiting)
        self.stats.waiting = len(self._waiting)
        for entry in cancelled:
            self._ends.finish_unstarted(entry.handle, "cancelled")

    # Admission --------------------------------------------------------------------

    def admit(self, running: int, budget: int | None = None) -> list[Admission]:
        """The waiting requests that join a batch of ``running`` rows now, best first.

        Their first prompt chunks, left-padded to one width, fit ``budget``
        tokens (the config's prefill budget when None); a prompt longer than
        the budget is prefilled a budget's worth at a time, so the first
        request is always admitted when a row is free and the budget is not spent.
        """
        budget = self.config.prefill_budget if budget is None else budget
        admitted: list[Admission] = []
        taken: RequestHandle | None = None  # out of the queue, not yet admitted nor ended
        longest = 0
        try:
            while running + len(admitted) < self.config.max_batch and budget > 0:
                with self._wake:
                    if not self._waiting:
                        break
                    entry = self._waiting[0]
                    prompt_length = len(entry.handle.request.prompt_ids)
                    chunk = min(prompt_length, self.config.prefill_budget)
                    padded = (len(admitted) + 1) * max(longest, chunk)
                    if padded > budget and (admitted or budget < chunk):
                        break
                    heapq.heappop(self._waiting)
                    self.stats.waiting = len(self._waiting)
                    taken = entry.handle
                if taken.cancelled or past(taken.request.deadline):
                    self._ends.finish_unstarted(
                        taken, "cancelled" if taken.cancelled else "timeout"
                    )
                    taken = None
                    continue
                try:
                    lease = self._lease(taken)
                except SlotsExhausted:
                    # Every slot is busy: wait for running requests to finish.
                    with self._wake:
                        heapq.heappush(self._waiting, entry)
                        self.stats.waiting = len(self._waiting)
                    taken = None
                    break
                except Exception as exc:
                    detail = f": {exc}" if isinstance(exc, AdapterError) else ""
                    self._ends.fail(
                        taken, RequestFailed(f"loading this request's adapters failed{detail}"), exc
                    )
                    taken = None
                    continue
                admitted.append(Admission(taken, lease))
                taken = None
                longest = max(longest, chunk)
        except BaseException as exc:
            # Whatever escaped, no request taken from the queue holds slots or
            # is left without an end (ending one twice is harmless: the first wins).
            message = "the engine failed while admitting this request"
            if taken is not None:
                self._ends.fail(taken, RequestFailed(message), exc)
            for admission in admitted:
                release_lease(admission.lease, admission.handle)
                self._ends.fail(admission.handle, RequestFailed(message), exc)
            raise
        return admitted

    def _lease(self, handle: RequestHandle) -> SlotLease | None:
        experts = handle.request.experts
        if self._slots is None or experts is None:
            return None
        return self._slots.acquire(experts)

    def drain(self) -> list[RequestHandle]:
        """Take every waiting request out of the queue (the engine is stopping)."""
        with self._wake:
            waiting, self._waiting = self._waiting, []
            self.stats.waiting = 0
        return [entry.handle for entry in waiting]


def release_lease(lease: SlotLease | None, handle: RequestHandle) -> None:
    """Give a lease back; a failure to do so is logged, never raised."""
    if lease is None:
        return
    try:
        lease.release()
    except Exception:
        logger.exception("giving back the slots of %s failed", handle.request.request_id)


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline

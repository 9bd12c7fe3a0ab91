"""What each base model is busy with, and how long a new request would take there.

The serving layer reports every request it sends to a model (with its
predicted length) and every one that ends (with its measured first-token time,
duration and length). From that ledger the router knows each model's queue
depth and predicts a new request's latency:

    queue wait  = requests beyond the batch capacity / capacity * mean duration
    latency     = queue wait + time to first token + predicted tokens * time per token

Times are exponentially weighted means of what was measured, so they follow the
current load: a busy model decodes each row more slowly, and that shows.
Thread-safe: requests start and end on different threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Before a model has answered anything: a small CPU model's rough speed.
DEFAULT_FIRST_TOKEN_SECONDS = 0.5
DEFAULT_SECONDS_PER_TOKEN = 0.05
SMOOTHING = 0.2  # weight of the newest measurement


@dataclass(frozen=True)
class ModelLoad:
    """One model's load as the router sees it when deciding."""

    in_flight: int
    queued_tokens: int  # predicted tokens still to come from the requests in flight
    capacity: int
    first_token_seconds: float
    seconds_per_token: float
    mean_request_seconds: float

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.capacity

    def predicted_latency(self, predicted_tokens: int) -> float:
        beyond = max(0, self.in_flight + 1 - self.capacity)
        queue_wait = beyond / self.capacity * self.mean_request_seconds
        return queue_wait + self.first_token_seconds + predicted_tokens * self.seconds_per_token


@dataclass
class _Model:
    capacity: int
    in_flight: int = 0
    queued_tokens: int = 0
    first_token_seconds: float = DEFAULT_FIRST_TOKEN_SECONDS
    seconds_per_token: float = DEFAULT_SECONDS_PER_TOKEN
    mean_request_seconds: float = DEFAULT_FIRST_TOKEN_SECONDS + 100 * DEFAULT_SECONDS_PER_TOKEN


@dataclass(frozen=True)
class Ticket:
    """Handed out when a request starts; given back when it ends."""

    number: int
    model: str
    predicted_tokens: int


class LoadTracker:
    """``ticket_lifetime``: a ticket never closed (a stream whose client left before
    it began) stops counting after this long, the longest a request may run.
    ``clock`` (seconds, monotonic) measures it; tests inject a fake one."""

    def __init__(
        self,
        *,
        default_capacity: int = 32,
        ticket_lifetime: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_capacity < 1:
            raise ValueError("default_capacity must be at least 1")
        if ticket_lifetime <= 0:
            raise ValueError("ticket_lifetime must be positive")
        self.default_capacity = default_capacity
        self.ticket_lifetime = ticket_lifetime
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._open: dict[int, tuple[Ticket, float]] = {}  # number -> (ticket, expiry)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def _model(self, model: str) -> _Model:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _Model(capacity=self.default_capacity)
        return state

    def set_capacity(self, model: str, capacity: int) -> None:
        """Rows the model decodes at once (the engine's max_batch times its replicas)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        with self._lock:
            self._model(model).capacity = capacity

    def started(self, model: str, predicted_tokens: int) -> Ticket:
        now = self._clock()
        with self._lock:
            self._expire(now)
            state = self._model(model)
            state.in_flight += 1
            state.queued_tokens += predicted_tokens
            ticket = Ticket(next(self._numbers), model, predicted_tokens)
            self._open[ticket.number] = (ticket, now + self.ticket_lifetime)
        return ticket

    def _expire(self, now: float) -> None:
        for ticket, expiry in list(self._open.values()):
            if expiry < now:
                self._close(ticket)

    def _close(self, ticket: Ticket) -> None:
        del self._open[ticket.number]
        state = self._model(ticket.model)
        state.in_flight -= 1
        state.queued_tokens -= ticket.predicted_tokens

    def finished(
        self,
        ticket: Ticket,
        *,
        first_token_seconds: float | None = None,
        total_seconds: float | None = None,
        completion_tokens: int = 0,
    ) -> None:
        """Close ``ticket`` (a second call is a no-op), learning from what was measured;
        a request that failed or was cancelled passes no times and teaches nothing."""
        with self._lock:
            if ticket.number not in self._open:
                return
            self._close(ticket)
            state = self._model(ticket.model)
            if first_token_seconds is not None:
                state.first_token_seconds = _smooth(state.first_token_seconds, first_token_seconds)
            if total_seconds is not None:
                state.mean_request_seconds = _smooth(state.mean_request_seconds, total_seconds)
                if first_token_seconds is not None and completion_tokens > 1:
                    per_token = (total_seconds - first_token_seconds) / (completion_tokens - 1)
                    state.seconds_per_token = _smooth(state.seconds_per_token, max(per_token, 0))

    def snapshot(self, model: str) -> ModelLoad:
        with self._lock:
            self._expire(self._clock())
            state = self._model(model)
            return ModelLoad(
                in_flight=state.in_flight,
                queued_tokens=state.queued_tokens,
                capacity=state.capacity,
                first_token_seconds=state.first_token_seconds,
                seconds_per_token=state.seconds_per_token,
                mean_request_seconds=state.mean_request_seconds,
            )


def _smooth(old: float, new: float) -> float:
    return (1.0 - SMOOTHING) * old + SMOOTHING * new

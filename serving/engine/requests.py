"""What flows into and out of the engine for one request."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from adapters.expert_sets import ExpertSet
from serving.engine.sampling import SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    experts: ExpertSet | None = None
    # time.monotonic() by which the request must finish, else "timeout".
    deadline: float | None = None
    # Admission order (UELLM): the latency objective's deadline, then the
    # router's predicted output length, shortest first.
    slo_deadline: float | None = None
    predicted_tokens: int | None = None
    # The prompt format's own ends of an answer, apart from the caller's stop
    # sequences (and their limit): a transcript's next-turn markers ("\nUser:").
    turn_markers: tuple[str, ...] = ()
    # Text the model opens its answer with that belongs to the prompt format,
    # not to the answer (the space after a transcript's "Assistant:"): dropped
    # once, when the answer starts with it.
    answer_lead: str = ""


@dataclass(frozen=True)
class TokenScores:
    """What the model thread measured of a sampled token: ids and log-probabilities."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the likeliest token ids, best first


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, and its likeliest alternatives."""

    token: str  # the token's own text (a piece of a character decodes as U+FFFD)
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int
    # The tokens this delta's text was made of, when the request asked for them.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop", "length", "cancelled", "timeout"
    prompt_tokens: int
    completion_tokens: int
    text: str
    # Every generated token's, when the request asked for log-probabilities.
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = TextDelta | Finished | Failed


@dataclass
class RequestHandle:
    """The caller's end of a request: its events, and a way to cancel it.

    Events are delivered to an asyncio queue when the handle was made for
    an event loop, else to a thread-safe queue (``wait``). A request ends
    with exactly one final event (Finished or Failed): the first one wins and
    anything published after it is dropped, so a caller never sees a request
    end twice nor events after its end.
    """

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _async_events: asyncio.Queue[Event] | None = None
    _sync_events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    _ended: bool = False

    def __post_init__(self) -> None:
        if self.loop is not None:
            self._async_events = asyncio.Queue()

    def publish(self, event: Event) -> None:
        """Called by the engine's output processor (one thread publishes to a handle)."""
        if self._ended:
            return
        if not isinstance(event, TextDelta):
            self._ended = True
        if self.loop is not None and self._async_events is not None:
            self.loop.call_soon_threadsafe(self._async_events.put_nowait, event)
        else:
            self._sync_events.put(event)

    @property
    def ended(self) -> bool:
        """Whether the final event has been published."""
        return self._ended

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def events(self) -> AsyncIterator[Event]:
        """Every event up to and including the final one (Finished or Failed)."""
        assert self._async_events is not None, "handle was made without an event loop"
        while True:
            event = await self._async_events.get()
            yield event
            if not isinstance(event, TextDelta):
                return

    def wait(self, timeout: float | None = None) -> Finished:
        """Block until the request ends; raises what it failed with."""
        while True:
            event = self._sync_events.get(timeout=timeout)
            if isinstance(event, Finished):
                return event
            if isinstance(event, Failed):
                raise event.error

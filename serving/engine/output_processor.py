"""Token ids to text and events, off the model thread.

Detokenizing costs CPU on every step for every row (the whole output is
decoded again, see ``detokenize``), so it does not run on the model thread:
the model thread hands each step's tokens to this processor through a queue
(one put per step) and goes on with the next forward, while the processor's
own thread turns them into text deltas with ``IncrementalDetokenizer`` (stop
sequences, a transcript's turn markers, the answer lead) and publishes
``TextDelta``, ``Finished`` and ``Failed`` to the requests' handles. It is the
only publisher of events: everything that ends a request, on any thread,
comes here as a message, so each handle's events keep their order.

Stop sequences are found on text, hence here. The model thread ran on in the
meantime, so a row that hit one is finished here at once, with reason
``stop`` and the tokens up to and including the one that completed the
stop sequence as its ``completion_tokens``; the processor then asks the
engine to retire the row (``abort``: its KV rows dropped, its slots given
back at the next step) and drops whatever the row produced after the stop,
unpublished. This is how vLLM's output processor aborts a request in its
engine core.

Invariants: a request gets at most one final event (the first wins; later
messages for an ended request are dropped) and the counters ``finished`` and
``failed`` move before the event is published. Whatever fails while one
request's tokens become text (its decoder, its stop sequences) fails that
request alone, and its row is aborted. ``close`` drains every message queued
before it, in order, and ends the thread; a message sent after ``close`` is
processed on the sender's thread, so no request is left without its end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from serving.engine.config import EngineStats
from serving.engine.detokenize import Decoder, IncrementalDetokenizer, fast_decoder
from serving.engine.errors import RequestFailed
from serving.engine.requests import (
    Event,
    Failed,
    Finished,
    RequestHandle,
    TextDelta,
    TokenLogprob,
    TokenScores,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenOutput:
    """One row's token of one step."""

    handle: RequestHandle
    token: int
    # Why the model thread ended the row with this token ("stop" for an
    # end-of-sequence token, "length", "cancelled", "timeout"); None: it runs on.
    finish: str | None = None
    # An end-of-sequence token: it counts as generated but is never shown.
    eos: bool = False
    # The token's log-probabilities, when its request asked for them.
    scores: TokenScores | None = None


@dataclass(frozen=True)
class _Failure:
    handle: RequestHandle
    error: Exception


@dataclass(frozen=True)
class _Unstarted:
    handle: RequestHandle
    reason: str


class _Close:
    """Ends the processor's thread once everything queued before it is done."""


_Message = Sequence[TokenOutput] | _Failure | _Unstarted | _Close


@dataclass
class _Stream:
    """The text side of one running request."""

    handle: RequestHandle
    detokenizer: IncrementalDetokenizer
    tokens: int = 0  # generated so far, end-of-sequence included
    # Log-probabilities (requests that asked): every shown token's, and those
    # not yet carried by a published delta.
    logprobs: list[TokenLogprob] = field(default_factory=list)
    unsent: list[TokenLogprob] = field(default_factory=list)


class OutputProcessor:
    def __init__(
        self,
        *,
        name: str,
        tokenizer: Decoder,
        stats: EngineStats,
        abort: Callable[[RequestHandle], None],
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self._decoder = fast_decoder(tokenizer)
        self.stats = stats
        self._abort = abort
        self._queue: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        # By id of the handle, which the stream holds: the id cannot be reused
        # while its entry exists.
        self._streams: dict[int, _Stream] = {}
        # Held while a message is processed: a message sent after close is
        # processed on its sender's thread, never beside the processor's.
        self._busy = threading.Lock()
        self._state = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    # Lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        with self._state:
            if self._closed or self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Process everything sent so far, then end the thread."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_Close())
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.error("the output processor %s did not end in %.0f s", self.name, timeout)
            return
        # Never started: what was sent is processed here.
        self._drain()

    # Messages (any thread) ------------------------------------------------------

    def step(self, outputs: Sequence[TokenOutput]) -> None:
        """The tokens of one step, every row's at once."""
        self._send(outputs)

    def fail(
        self, handle: RequestHandle, error: Exception, cause: BaseException | None = None
    ) -> None:
        """End a request with ``Failed(error)``, unless it has ended already."""
        if cause is not None:
            error.__cause__ = cause
        self._send(_Failure(handle, error))

    def finish_unstarted(self, handle: RequestHandle, reason: str) -> None:
        """End a request that never ran (cancelled or past its deadline while waiting)."""
        self._send(_Unstarted(handle, reason))

    def _send(self, message: _Message) -> None:
        with self._state:
            if not self._closed:
                self._queue.put(message)
                return
        self._drain()
        self._process(message)

    # The processor's thread -----------------------------------------------------

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if isinstance(message, _Close):
                return
            self._process(message)

    def _drain(self) -> None:
        """Process what is left in the queue, on this thread (the processor's has ended)."""
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(message, _Close):
                self._process(message)

    def _process(self, message: _Message) -> None:
        with self._busy:
            try:
                if isinstance(message, _Failure):
                    self._end_failed(message.handle, message.error)
                elif isinstance(message, _Unstarted):
                    self._end_unstarted(message.handle, message.reason)
                elif not isinstance(message, _Close):
                    for output in message:
                        self._token(output)
            except Exception:
                # Never let one message end the thread: every later request
                # would wait for its events forever.
                logger.exception("the output processor %s failed on a message", self.name)

    def _token(self, output: TokenOutput) -> None:
        handle = output.handle
        if handle.ended:
            # Stopped here before the model thread retired the row: what came
            # after the stop is never shown.
            self._streams.pop(id(handle), None)
            return
        try:
            stream = self._streams.get(id(handle))
            if stream is None:
                request = handle.request
                detokenizer = IncrementalDetokenizer(
                    self._decoder, request.params.stop + request.turn_markers, request.answer_lead
                )
                stream = self._streams[id(handle)] = _Stream(handle, detokenizer)
            stream.tokens += 1
            reason = output.finish
            if not output.eos:
                if output.scores is not None:
                    entry = self._logprob(output.token, output.scores)
                    stream.logprobs.append(entry)
                    stream.unsent.append(entry)
                delta = stream.detokenizer.add(output.token)
                if delta:
                    self._publish(handle, TextDelta(delta, output.token, _take(stream.unsent)))
                if stream.detokenizer.stopped:
                    if reason is None:
                        self._abort(handle)
                    reason = "stop"
            if reason is not None:
                self._end_finished(stream, reason)
        except Exception as exc:
            logger.exception("turning the tokens of %s into text failed", handle.request.request_id)
            if output.finish is None:
                self._abort(handle)
            error = RequestFailed("turning this request's tokens into text failed")
            error.__cause__ = exc
            self._end_failed(handle, error)

    # Final events ----------------------------------------------------------------

    def _end_finished(self, stream: _Stream, reason: str) -> None:
        handle = stream.handle
        rest = stream.detokenizer.flush()
        if rest or stream.unsent:
            self._publish(handle, TextDelta(rest, -1, _take(stream.unsent)))
        self._streams.pop(id(handle), None)
        self.stats.finished += 1
        self._publish(
            handle,
            Finished(
                reason=reason,
                prompt_tokens=len(handle.request.prompt_ids),
                completion_tokens=stream.tokens,
                text=stream.detokenizer.emitted,
                logprobs=(
                    tuple(stream.logprobs) if handle.request.params.logprobs is not None else None
                ),
            ),
        )

    def _logprob(self, token: int, scores: TokenScores) -> TokenLogprob:
        return TokenLogprob(
            token=self._piece(token),
            logprob=scores.logprob,
            top=tuple((self._piece(t), lp) for t, lp in scores.top),
        )

    def _piece(self, token: int) -> str:
        text: str = self._decoder.decode([token], skip_special_tokens=False)
        return text

    def _end_unstarted(self, handle: RequestHandle, reason: str) -> None:
        if handle.ended:
            return
        self.stats.finished += 1
        self._publish(handle, Finished(reason, len(handle.request.prompt_ids), 0, ""))

    def _end_failed(self, handle: RequestHandle, error: Exception) -> None:
        self._streams.pop(id(handle), None)
        if handle.ended:
            return
        self.stats.failed += 1
        self._publish(handle, Failed(error))

    def _publish(self, handle: RequestHandle, event: Event) -> None:
        """Deliver an event; a caller that is gone (its event loop closed) cancels its request."""
        try:
            handle.publish(event)
        except Exception:
            logger.warning(
                "could not deliver an event of %s; cancelling it",
                handle.request.request_id,
                exc_info=True,
            )
            handle.cancel()


def _take(entries: list[TokenLogprob]) -> tuple[TokenLogprob, ...]:
    taken = tuple(entries)
    entries.clear()
    return taken

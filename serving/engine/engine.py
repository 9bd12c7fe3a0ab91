"""The generation engine of one base model: continuous (iteration-level) batching.

One thread owns the model. Between two decode steps it admits waiting
requests (prefill each, then merge its KV cache into the running batch) and
retires finished ones, so requests join and leave the batch without waiting
for each other. Every row carries its own experts through the multi-LoRA
layers: one forward serves many users' adapters.

Admission is bounded (a full queue refuses new work at once, the API answers
503) and ordered as UELLM's scheduler does: by latency objective, then by
predicted output length. Deadlines are compared in windows of
SLO_WINDOW_SECONDS, so that among requests due at about the same time the
shortest predicted answer goes first (it frees its row soonest), while a
request due clearly earlier is never passed by a shorter one due later.

Failures are isolated per request: whatever goes wrong with one row (its
generator, its adapter lease, its sampling, its detokenizing, non-finite
logits from a broken adapter) fails that request alone (``RequestFailed``)
and the batch goes on. A prefill forward that fails is retried one prompt at
a time, so that only the prompt that cannot be run fails; a decode forward
that fails fails the rows of that batch. Invariant: every request taken from
the queue ends with exactly one final event (Finished or Failed) and gives
back its adapter slots, whatever fails.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from adapters.device.slot_cache import AdapterSlotCache, SlotLease
from adapters.errors import AdapterError, SlotsExhausted
from serving.engine.detokenize import Decoder, IncrementalDetokenizer
from serving.engine.kv_cache import BatchKVCache
from serving.engine.requests import (
    Event,
    Failed,
    Finished,
    GenerationRequest,
    RequestHandle,
    TextDelta,
)
from serving.engine.sampling import MAX_SEED, MIN_SEED, new_generator, sample_token

logger = logging.getLogger(__name__)

# Drop leading all-padding columns once they are this many and at least a
# quarter of the cache: each drop copies the cache, so not on every step.
TRIM_MIN_COLUMNS = 64


class EngineOverloaded(Exception):
    """The admission queue is full; try again later (API: 503)."""


class EngineStopped(Exception):
    """The engine is not running."""


class RequestFailed(Exception):
    """One request failed in the engine; the others go on.

    The message says what failed for this request and is safe to show to its
    caller (the original error is in the server log, and in ``__cause__``).
    """


class InvalidSampling(RequestFailed):
    """The request's sampling parameters could not be used (its caller is to blame)."""


class NonFiniteLogits(RequestFailed):
    """The model produced NaN or infinite logits for this request."""


class RoutedModel(Protocol):
    """The multi-LoRA wrapper's routing, as the engine uses it."""

    def routing(self, expert_slots: Any, gate_slots: Any = None, *, check: bool = True) -> Any: ...


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32
    max_queue: int = 256
    # Prompt tokens prefilled between two decode steps: bounds how long the
    # running requests wait while new ones join.
    prefill_budget: int = 2048
    context_length: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "prefill_budget", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be at least 1")


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    steps: int = 0
    generated_tokens: int = 0
    prefilled_tokens: int = 0
    finished: int = 0
    failed: int = 0


@dataclass
class _Row:
    handle: RequestHandle
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    lease: SlotLease | None  # None once given back
    pending_token: int  # sampled, not yet fed to the model
    kv_length: int  # this row's real tokens in the cache
    generated: int = 0


SLO_WINDOW_SECONDS = 1.0


@dataclass(order=True)
class _Waiting:
    slo_window: float
    predicted_tokens: int
    order: int
    handle: RequestHandle = field(compare=False)

    @classmethod
    def of(cls, handle: RequestHandle, order: int) -> _Waiting:
        request = handle.request
        due = request.slo_deadline if request.slo_deadline is not None else request.deadline
        window = math.inf if due is None else math.floor(due / SLO_WINDOW_SECONDS)
        length = request.predicted_tokens or request.params.max_tokens
        return cls(window, length, order, handle)


class Engine:
    def __init__(
        self,
        *,
        model_id: str,
        model: torch.nn.Module,
        tokenizer: Decoder,
        eos_token_ids: set[int],
        config: EngineConfig | None = None,
        lora: RoutedModel | None = None,
        slots: AdapterSlotCache | None = None,
    ) -> None:
        if (lora is None) != (slots is None):
            raise ValueError("give both the multi-LoRA model and its slot cache, or neither")
        self.model_id = model_id
        self.model = model
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.config = config or EngineConfig()
        self.lora = lora
        self.slots = slots
        self.stats = EngineStats()
        self._device = next(model.parameters()).device
        model_config: Any = model.config
        self._num_layers = int(model_config.num_hidden_layers)
        vocab_size = getattr(model_config, "vocab_size", None)
        self._vocab_size = vocab_size if isinstance(vocab_size, int) else None
        self._waiting: list[_Waiting] = []
        self._arrivals = itertools.count()
        self._rows: list[_Row] = []
        self._cache = BatchKVCache(self._num_layers)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # Lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{self.model_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # Submission ----------------------------------------------------------------

    def submit(
        self, request: GenerationRequest, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> RequestHandle:
        if len(request.prompt_ids) + request.params.max_tokens > self.config.context_length:
            raise ValueError(
                f"prompt ({len(request.prompt_ids)} tokens) plus max_tokens "
                f"({request.params.max_tokens}) exceeds the context length "
                f"{self.config.context_length} of {self.model_id}"
            )
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        if self._vocab_size is not None and not all(
            0 <= token < self._vocab_size for token in request.prompt_ids
        ):
            raise ValueError(f"the prompt has token ids outside {self.model_id}'s vocabulary")
        handle = RequestHandle(request, loop=loop)
        with self._wake:
            if self._stopping or self._thread is None:
                raise EngineStopped(f"the engine of {self.model_id} is not running")
            if len(self._waiting) >= self.config.max_queue:
                self._drop_cancelled_waiting()
            if len(self._waiting) >= self.config.max_queue:
                raise EngineOverloaded(f"{self.model_id} has {len(self._waiting)} requests waiting")
            heapq.heappush(self._waiting, _Waiting.of(handle, next(self._arrivals)))
            self.stats.waiting = len(self._waiting)
            self._wake.notify()
        return handle

    def _drop_cancelled_waiting(self) -> None:
        """Free queue places held by requests cancelled before they started."""
        cancelled = [w for w in self._waiting if w.handle.cancelled]
        if not cancelled:
            return
        self._waiting = [w for w in self._waiting if not w.handle.cancelled]
        heapq.heapify(self._waiting)
        for entry in cancelled:
            self._finish_unstarted(entry.handle, "cancelled")

    # The loop --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._rows:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                with torch.inference_mode():
                    self._admit()
                    if self._rows:
                        self._decode_step()
            except Exception as exc:  # never let one bad step kill the engine
                logger.exception("an engine step of %s failed; failing its batch", self.model_id)
                self._fail_all(
                    f"the engine of {self.model_id} failed while running this request", exc
                )
        self._fail_all(f"the engine of {self.model_id} stopped", None, stopped=True)

    def _admit(self) -> None:
        """Move waiting requests into the batch, prefilling them together."""
        admitted: list[_Row] = []
        longest = 0
        try:
            while len(self._rows) + len(admitted) < self.config.max_batch:
                with self._wake:
                    if not self._waiting:
                        break
                    entry = self._waiting[0]
                    prompt_length = len(entry.handle.request.prompt_ids)
                    # The prefill batch is padded to its longest prompt, so the
                    # budget bounds rows x longest; the first request always fits.
                    padded = (len(admitted) + 1) * max(longest, prompt_length)
                    if admitted and padded > self.config.prefill_budget:
                        break
                    heapq.heappop(self._waiting)
                    self.stats.waiting = len(self._waiting)
                handle = entry.handle
                if handle.cancelled or _past(handle.request.deadline):
                    self._finish_unstarted(handle, "cancelled" if handle.cancelled else "timeout")
                    continue
                try:
                    row = self._new_row(handle)
                except SlotsExhausted:
                    # Every slot is busy: wait for running requests to finish.
                    with self._wake:
                        heapq.heappush(self._waiting, entry)
                        self.stats.waiting = len(self._waiting)
                    break
                if row is not None:
                    admitted.append(row)
                    longest = max(longest, prompt_length)
            if admitted:
                self._prefill(admitted)
        except BaseException as exc:
            # Whatever escaped, no request taken from the queue is left without an end.
            for row in admitted:
                self._fail_row(
                    row, RequestFailed("the engine failed while admitting this request"), exc
                )
            raise

    def _new_row(self, handle: RequestHandle) -> _Row | None:
        """The request's row, or None when it cannot start (it has failed then).

        Raises ``SlotsExhausted`` (holding nothing) when its adapters must wait.
        """
        request = handle.request
        params = request.params
        try:
            generator = new_generator(params)
        except Exception as exc:
            # SamplingParams refuses such seeds: only a caller that skipped
            # the validation gets here, and it alone fails.
            self._fail_handle(
                handle,
                InvalidSampling(
                    f"seed {params.seed} cannot seed the sampler: "
                    f"it must be an integer from {MIN_SEED} to {MAX_SEED}"
                ),
                exc,
            )
            return None
        lease = None
        if self.slots is not None and request.experts is not None:
            try:
                lease = self.slots.acquire(request.experts)
            except SlotsExhausted:
                raise
            except Exception as exc:
                detail = f": {exc}" if isinstance(exc, AdapterError) else ""
                self._fail_handle(
                    handle, RequestFailed(f"loading this request's adapters failed{detail}"), exc
                )
                return None
        return _Row(
            handle=handle,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, params.stop + request.turn_markers, request.answer_lead
            ),
            generator=generator,
            lease=lease,
            pending_token=-1,
            kv_length=len(request.prompt_ids),
        )

    def _prefill(self, rows: list[_Row]) -> None:
        """One forward over the new prompts, then merge them into the batch."""
        forward = self._prefill_or_retry(rows)
        if forward is None:
            return
        logits, cache = forward
        self.stats.prefilled_tokens += sum(row.kv_length for row in rows)
        keep = self._accept_tokens(rows, logits)
        if keep:
            if len(keep) < len(rows):
                cache.select_rows(torch.tensor(keep, dtype=torch.long, device=self._device))
            self._cache.append_rows(cache)
            self._rows.extend(rows[index] for index in keep)
        self.stats.running = len(self._rows)

    def _prefill_or_retry(self, rows: list[_Row]) -> tuple[torch.Tensor, BatchKVCache] | None:
        """The prompts' forward; None when it failed.

        A batch of prompts that fails is retried one prompt at a time (each
        merged on its own), so that only a prompt that cannot be run fails.
        """
        try:
            return self._prefill_forward(rows)
        except Exception as exc:
            if len(rows) == 1:
                logger.exception("the prefill of %s failed", rows[0].handle.request.request_id)
                self._fail_row(
                    rows[0], RequestFailed("the model failed on this request's prompt"), exc
                )
                return None
            logger.warning(
                "a prefill of %d prompts on %s failed; retrying them one by one",
                len(rows),
                self.model_id,
                exc_info=True,
            )
        # Outside the handler: a retry's own failure is not a consequence of this one.
        for row in rows:
            self._prefill([row])
        return None

    def _prefill_forward(self, rows: list[_Row]) -> tuple[torch.Tensor, BatchKVCache]:
        """The prompts left-padded to one width: their last logits and their cache."""
        lengths = [row.kv_length for row in rows]
        width = max(lengths)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - lengths[index] :] = torch.tensor(row.handle.request.prompt_ids)
            mask[index, width - lengths[index] :] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = BatchKVCache(self._num_layers)
        with self._routing([row.lease for row in rows]):
            output = self.model(
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions.to(self._device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return output.logits[:, -1], cache

    def _decode_step(self) -> None:
        rows = self._rows
        length = self._cache.length + 1
        kv_lengths = torch.tensor([row.kv_length + 1 for row in rows], device=self._device)
        columns = torch.arange(length, device=self._device)
        attention_mask = (columns.unsqueeze(0) >= length - kv_lengths.unsqueeze(1)).long()
        try:
            with self._routing([row.lease for row in rows]):
                output = self.model(
                    input_ids=torch.tensor(
                        [[row.pending_token] for row in rows], device=self._device
                    ),
                    attention_mask=attention_mask,
                    position_ids=(kv_lengths - 1).unsqueeze(1),
                    past_key_values=self._cache,
                    use_cache=True,
                )
        except Exception as exc:
            # The cache may hold half a step: the batch cannot go on.
            logger.exception("a decode step of %s failed; failing its batch", self.model_id)
            self._fail_all("the model failed on a decode step of this request's batch", exc)
            return
        self.stats.steps += 1
        for row in rows:
            row.kv_length += 1
        keep = self._accept_tokens(rows, output.logits[:, -1])
        if len(keep) < len(rows):
            self._rows = [rows[i] for i in keep]
            self._cache.select_rows(torch.tensor(keep, dtype=torch.long, device=self._device))
            self._trim_padding()
        self.stats.running = len(self._rows)

    def _routing(self, leases: list[SlotLease | None]) -> Any:
        # Every expert position costs a rank's worth of compute in every
        # wrapped layer, so pass only as many as the widest row uses, and no
        # routing at all (the plain base forward) when no row has experts.
        width = max(
            (sum(1 for s in lease.expert_slots if s) for lease in leases if lease), default=0
        )
        if self.lora is None or width == 0:
            return _NoRouting()
        expert_slots = [
            list(lease.expert_slots[:width]) if lease else [0] * width for lease in leases
        ]
        gate_slots = [lease.gate_slot if lease else 0 for lease in leases]
        return self.lora.routing(expert_slots, gate_slots, check=False)

    def _accept_tokens(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Take each row's next token from ``logits [rows, vocab]``; the indices that go on.

        A row whose logits are not finite, or whose token cannot be taken,
        fails alone.
        """
        # One check and one argmax for the batch, not one per row.
        finite: list[bool] = torch.isfinite(logits).all(dim=-1).tolist()
        greedy: list[int] = logits.argmax(dim=-1).tolist()
        keep: list[int] = []
        for index, row in enumerate(rows):
            if not finite[index]:
                self._fail_row(row, _non_finite(row))
                continue
            try:
                goes_on = self._accept_token(row, logits[index], greedy[index])
            except Exception as exc:
                logger.exception("request %s failed", row.handle.request.request_id)
                self._fail_row(
                    row, RequestFailed("generating this request's next token failed"), exc
                )
                continue
            if goes_on:
                keep.append(index)
        return keep

    def _accept_token(self, row: _Row, logits: torch.Tensor, greedy: int) -> bool:
        """Sample, publish and check whether the row goes on; False: it finished.

        ``greedy`` is the row's argmax, computed for the whole batch at once.
        """
        request = row.handle.request
        if request.params.greedy:
            token = greedy
        else:
            token = sample_token(logits, request.params, row.generator)
        row.generated += 1
        self.stats.generated_tokens += 1
        reason = None
        if token in self.eos_token_ids:
            reason = "stop"
        else:
            delta = row.detokenizer.add(token)
            if delta:
                self._publish(row.handle, TextDelta(delta, token))
            if row.detokenizer.stopped:
                reason = "stop"
            elif (
                row.generated >= request.params.max_tokens
                or row.kv_length + 1 >= self.config.context_length
            ):
                reason = "length"
        if reason is None and row.handle.cancelled:
            reason = "cancelled"
        if reason is None and _past(request.deadline):
            reason = "timeout"
        if reason is None:
            row.pending_token = token
            return True
        self._finish(row, reason)
        return False

    def _finish(self, row: _Row, reason: str) -> None:
        rest = row.detokenizer.flush()
        if rest:
            self._publish(row.handle, TextDelta(rest, -1))
        self._release(row)
        self._publish(
            row.handle,
            Finished(
                reason=reason,
                prompt_tokens=len(row.handle.request.prompt_ids),
                completion_tokens=row.generated,
                text=row.detokenizer.emitted,
            ),
        )
        self.stats.finished += 1

    def _finish_unstarted(self, handle: RequestHandle, reason: str) -> None:
        self._publish(handle, Finished(reason, len(handle.request.prompt_ids), 0, ""))
        self.stats.finished += 1

    def _trim_padding(self) -> None:
        if not self._rows:
            self._cache = BatchKVCache(self._num_layers)
            return
        padding = self._cache.length - max(row.kv_length for row in self._rows)
        if padding >= TRIM_MIN_COLUMNS and padding * 4 >= self._cache.length:
            self._cache.drop_leading(padding)

    # Failures --------------------------------------------------------------------

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

    def _release(self, row: _Row) -> None:
        """Give the row's adapter slots back, once."""
        lease, row.lease = row.lease, None
        if lease is None:
            return
        try:
            lease.release()
        except Exception:
            logger.exception("giving back the slots of %s failed", row.handle.request.request_id)

    def _fail_handle(
        self, handle: RequestHandle, error: Exception, cause: BaseException | None = None
    ) -> None:
        if handle.ended:
            return
        error.__cause__ = cause
        self._publish(handle, Failed(error))
        self.stats.failed += 1

    def _fail_row(self, row: _Row, error: Exception, cause: BaseException | None = None) -> None:
        """Fail one request; its KV rows are dropped by the caller, as a finished row's are."""
        self._release(row)
        self._fail_handle(row.handle, error, cause)

    def _fail_all(
        self, message: str, cause: BaseException | None, *, stopped: bool = False
    ) -> None:
        """Fail every running request (and, when the engine stops, every waiting one)."""
        rows, self._rows = self._rows, []
        self._cache = BatchKVCache(self._num_layers)
        self.stats.running = 0
        for row in rows:
            self._fail_row(
                row, EngineStopped(message) if stopped else RequestFailed(message), cause
            )
        if stopped:
            with self._wake:
                waiting, self._waiting = self._waiting, []
                self.stats.waiting = 0
            for entry in waiting:
                self._fail_handle(entry.handle, EngineStopped(message))


def _non_finite(row: _Row) -> NonFiniteLogits:
    if row.handle.request.experts is not None:
        return NonFiniteLogits(
            "the model produced non-finite logits for this request; its adapter may be broken"
        )
    return NonFiniteLogits("the model produced non-finite logits for this request")


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


class _NoRouting:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None

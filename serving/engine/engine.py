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

from adapters.errors import SlotsExhausted
from adapters.slot_cache import AdapterSlotCache, SlotLease
from serving.engine.detokenize import Decoder, IncrementalDetokenizer
from serving.engine.kv_cache import BatchKVCache
from serving.engine.requests import Failed, Finished, GenerationRequest, RequestHandle, TextDelta
from serving.engine.sampling import new_generator, sample_token

logger = logging.getLogger(__name__)

# Drop leading all-padding columns once they are this many and at least a
# quarter of the cache: each drop copies the cache, so not on every step.
TRIM_MIN_COLUMNS = 64


class EngineOverloaded(Exception):
    """The admission queue is full; try again later (API: 503)."""


class EngineStopped(Exception):
    """The engine is not running."""


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


@dataclass
class _Row:
    handle: RequestHandle
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    lease: SlotLease | None
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
                logger.exception("engine step failed; failing the running requests")
                self._fail_all(exc)
        self._fail_all(EngineStopped(f"the engine of {self.model_id} stopped"))

    def _admit(self) -> None:
        """Move waiting requests into the batch, prefilling them together."""
        admitted: list[tuple[RequestHandle, SlotLease | None]] = []
        longest = 0
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
            lease = None
            if self.slots is not None and handle.request.experts is not None:
                try:
                    lease = self.slots.acquire(handle.request.experts)
                except SlotsExhausted:
                    # Every slot is busy: wait for running requests to finish.
                    with self._wake:
                        heapq.heappush(self._waiting, entry)
                        self.stats.waiting = len(self._waiting)
                    break
                except Exception as exc:
                    handle.publish(Failed(exc))
                    continue
            admitted.append((handle, lease))
            longest = max(longest, prompt_length)
        if admitted:
            self._prefill(admitted)

    def _prefill(self, admitted: list[tuple[RequestHandle, SlotLease | None]]) -> None:
        """One forward over the new prompts, left-padded, then merge them in."""
        lengths = [len(handle.request.prompt_ids) for handle, _ in admitted]
        width = max(lengths)
        ids = torch.zeros((len(admitted), width), dtype=torch.long)
        mask = torch.zeros((len(admitted), width), dtype=torch.long)
        for index, (handle, _) in enumerate(admitted):
            ids[index, width - lengths[index] :] = torch.tensor(handle.request.prompt_ids)
            mask[index, width - lengths[index] :] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = BatchKVCache(self._num_layers)
        with self._routing([lease for _, lease in admitted]):
            output = self.model(
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions.to(self._device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.stats.prefilled_tokens += sum(lengths)
        logits = output.logits[:, -1]
        keep: list[int] = []
        for index, (handle, lease) in enumerate(admitted):
            params = handle.request.params
            row = _Row(
                handle=handle,
                detokenizer=IncrementalDetokenizer(self.tokenizer, params.stop),
                generator=new_generator(params),
                lease=lease,
                pending_token=-1,
                kv_length=lengths[index],
            )
            if self._accept_token(row, logits[index]):
                keep.append(index)
                self._rows.append(row)
        if keep:
            if len(keep) < len(admitted):
                cache.select_rows(torch.tensor(keep, dtype=torch.long, device=self._device))
            self._cache.append_rows(cache)
        self.stats.running = len(self._rows)

    def _decode_step(self) -> None:
        rows = self._rows
        length = self._cache.length + 1
        kv_lengths = torch.tensor([row.kv_length + 1 for row in rows], device=self._device)
        columns = torch.arange(length, device=self._device)
        attention_mask = (columns.unsqueeze(0) >= length - kv_lengths.unsqueeze(1)).long()
        with self._routing([row.lease for row in rows]):
            output = self.model(
                input_ids=torch.tensor([[row.pending_token] for row in rows], device=self._device),
                attention_mask=attention_mask,
                position_ids=(kv_lengths - 1).unsqueeze(1),
                past_key_values=self._cache,
                use_cache=True,
            )
        self.stats.steps += 1
        logits = output.logits[:, -1]
        # One argmax for the batch instead of one per greedy row.
        greedy: list[int] = logits.argmax(dim=-1).tolist()
        keep: list[int] = []
        for index, row in enumerate(rows):
            row.kv_length += 1
            if self._accept_token(row, logits[index], greedy[index]):
                keep.append(index)
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

    def _accept_token(self, row: _Row, logits: torch.Tensor, greedy: int | None = None) -> bool:
        """Sample, publish and check whether the row goes on; False: it finished.

        ``greedy`` is the row's argmax when the caller computed it for the
        whole batch at once.
        """
        request = row.handle.request
        if greedy is not None and request.params.greedy:
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
                row.handle.publish(TextDelta(delta, token))
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
            row.handle.publish(TextDelta(rest, -1))
        if row.lease is not None:
            row.lease.release()
        row.handle.publish(
            Finished(
                reason=reason,
                prompt_tokens=len(row.handle.request.prompt_ids),
                completion_tokens=row.generated,
                text=row.detokenizer.emitted,
            )
        )
        self.stats.finished += 1

    def _finish_unstarted(self, handle: RequestHandle, reason: str) -> None:
        handle.publish(Finished(reason, len(handle.request.prompt_ids), 0, ""))
        self.stats.finished += 1

    def _trim_padding(self) -> None:
        if not self._rows:
            self._cache = BatchKVCache(self._num_layers)
            return
        padding = self._cache.length - max(row.kv_length for row in self._rows)
        if padding >= TRIM_MIN_COLUMNS and padding * 4 >= self._cache.length:
            self._cache.drop_leading(padding)

    def _fail_all(self, error: Exception) -> None:
        for row in self._rows:
            if row.lease is not None:
                row.lease.release()
            row.handle.publish(Failed(error))
        self._rows = []
        self._cache = BatchKVCache(self._num_layers)
        self.stats.running = 0
        if isinstance(error, EngineStopped):
            with self._wake:
                waiting, self._waiting = self._waiting, []
            for entry in waiting:
                entry.handle.publish(Failed(error))


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


class _NoRouting:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None

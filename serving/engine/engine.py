"""The generation engine of one base model: continuous (iteration-level) batching.

One thread owns the model. Between two decode steps it admits waiting
requests (prefill each into its own KV cache row, then let it decode with the
batch) and retires finished ones, so requests join and leave the batch
without waiting for each other. A prompt longer than the prefill budget is
prefilled a budget's worth per step (chunked prefill), so a long prompt
delays the running requests' next tokens by one chunk, not by itself. Every
row carries its own experts through the multi-LoRA layers: one forward
serves many users' adapters.

``Engine`` is the coordinator of three parts, each in its own module:

- ``scheduler.Scheduler``: the bounded waiting queue in UELLM's order (SLO
  window, then predicted length), and which requests join the batch under the
  batch and prefill budgets, with their adapter slots leased;
- ``model_runner.ModelRunner``: the batch's KV cache, the prefill and decode
  forwards with each row's experts routed, and sampling (token ids only);
- ``output_processor.OutputProcessor``: on a thread of its own, token ids to
  text deltas, stop sequences, and every event published to the handles.

The engine itself keeps the running rows and decides when each ends on the
model side (end-of-sequence, length, cancellation, deadline); a stop sequence
is found by the output processor, which finishes the request and asks the
engine to retire its row (``_abort``), which it does before its next step.

Failures are isolated per request: whatever goes wrong with one row (its
generator, its adapter lease, its sampling, its detokenizing, non-finite
logits from a broken adapter) fails that request alone (``RequestFailed``)
and the batch goes on. A prefill forward that fails is retried one prompt at
a time, so that only the prompt that cannot be run fails; a decode forward
that fails fails the rows of that batch. Invariant: every request taken from
the queue ends with exactly one final event (Finished or Failed) and gives
back its adapter slots, whatever fails. ``stop`` fails what is running and
waiting, then returns once the output processor has published every event
sent before, so every request has ended when it returns (unless a forward
outlasts its 30 s wait for the model thread: that thread then ends what it
holds itself, as it leaves).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adapters.device.slot_cache import AdapterSlotCache
from serving.engine.config import EngineConfig, EngineStats
from serving.engine.constraints import ConstraintFailed, GrammarVocabulary
from serving.engine.detokenize import Decoder
from serving.engine.errors import (
    EngineOverloaded,
    EngineStopped,
    InvalidSampling,
    NonFiniteLogits,
    RequestFailed,
)
from serving.engine.model_runner import (
    Logits,
    ModelRunner,
    Prefill,
    RoutedModel,
    RowState,
    scores,
)
from serving.engine.output_processor import OutputProcessor, TokenOutput
from serving.engine.requests import GenerationRequest, RequestHandle
from serving.engine.scheduler import Admission, Scheduler, past, release_lease

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineOverloaded",
    "EngineStats",
    "EngineStopped",
    "InvalidSampling",
    "NonFiniteLogits",
    "RequestFailed",
    "RoutedModel",
]

logger = logging.getLogger(__name__)


@dataclass
class _Row:
    handle: RequestHandle
    state: RowState
    generated: int = 0


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
        self._rows: list[_Row] = []
        # Admitted requests whose prompts are still being prefilled, a chunk a step.
        self._prefilling: list[_Row] = []
        # Requests the output processor has ended while their rows still run.
        self._aborted: queue.SimpleQueue[RequestHandle] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._runner = ModelRunner(
            model,
            lora=lora,
            max_rows=self.config.max_batch,
            context_length=self.config.context_length,
            cuda_graphs=self.config.cuda_graphs,
        )
        self._outputs = OutputProcessor(
            name=f"engine-{model_id}-output",
            tokenizer=tokenizer,
            stats=self.stats,
            abort=self._abort,
        )
        self._scheduler = Scheduler(
            model_id=model_id, config=self.config, stats=self.stats, ends=self._outputs, slots=slots
        )
        self._grammar = GrammarVocabulary(
            tokenizer, vocab_size=self._runner.vocab_size, eos_token_ids=eos_token_ids
        )

    # Lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._outputs.start()
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{self.model_id}", daemon=True
        )
        self._thread.start()
        self._scheduler.open()

    def stop(self) -> None:
        self._scheduler.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        # After the model thread: the failures of what it left are queued by now.
        self._outputs.close()

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
        vocab_size = self._runner.vocab_size
        if vocab_size is not None and not all(
            0 <= token < vocab_size for token in request.prompt_ids
        ):
            raise ValueError(f"the prompt has token ids outside {self.model_id}'s vocabulary")
        handle = RequestHandle(request, loop=loop)
        self._scheduler.add(handle)
        return handle

    # The loop --------------------------------------------------------------------

    def _run(self) -> None:
        while self._scheduler.wait_for_work(busy=bool(self._rows or self._prefilling)):
            try:
                with torch.inference_mode():
                    self._retire_aborted()
                    self._admit()
                    if self._rows:
                        self._decode_step()
            except Exception as exc:  # never let one bad step kill the engine
                logger.exception("an engine step of %s failed; failing its batch", self.model_id)
                self._fail_all(
                    f"the engine of {self.model_id} failed while running this request", exc
                )
        self._fail_all(f"the engine of {self.model_id} stopped", None, stopped=True)

    def _abort(self, handle: RequestHandle) -> None:
        """The output processor ended this request (a stop sequence, or its text failed)."""
        self._aborted.put(handle)

    def _retire_aborted(self) -> None:
        """Drop the rows of requests the output processor has ended, giving their slots back."""
        aborted: list[RequestHandle] = []
        while True:
            try:
                aborted.append(self._aborted.get_nowait())
            except queue.Empty:
                break
        if not aborted or not self._rows:
            return
        # ``aborted`` holds the handles, so their ids stay theirs while compared.
        ended = {id(handle) for handle in aborted}
        keep = [i for i, row in enumerate(self._rows) if id(row.handle) not in ended]
        if len(keep) == len(self._rows):
            return
        for row in self._rows:
            if id(row.handle) in ended:
                self._release(row)
        self._retain(keep)

    def _admit(self) -> None:
        """Prefill within the step's budget: a chunk of a long prompt, then new requests."""
        budget = self.config.prefill_budget
        if self._prefilling:
            budget -= self._prefill_more(self._prefilling[0], budget)
        if budget <= 0:
            return
        admissions = self._scheduler.admit(self._held_rows(), budget)
        rows: list[_Row] = []
        started = 0
        try:
            for admission in admissions:
                row = self._new_row(admission)
                started += 1
                if row is not None:
                    rows.append(row)
            if rows:
                self._prefill(rows)
        except BaseException as exc:
            # Whatever escaped, no request taken from the queue is left without an end.
            message = "the engine failed while admitting this request"
            for admission in admissions[started:]:
                release_lease(admission.lease, admission.handle)
                self._outputs.fail(admission.handle, RequestFailed(message), exc)
            for row in rows:
                self._fail_row(row, RequestFailed(message), exc)
            raise

    def _held_rows(self) -> int:
        """Cache rows held: the running requests and those still prefilling."""
        return len(self._rows) + len(self._prefilling)

    def _new_row(self, admission: Admission) -> _Row | None:
        """The admitted request's row, or None when it cannot start (it has failed then)."""
        handle = admission.handle
        request = handle.request
        try:
            constraint = (
                None
                if request.params.grammar is None
                else self._grammar.matcher(request.params.grammar)
            )
            state = self._runner.new_row(
                request_id=request.request_id,
                prompt_ids=request.prompt_ids,
                params=request.params,
                lease=admission.lease,
                adapted=request.experts is not None,
                constraint=constraint,
            )
        except (InvalidSampling, ConstraintFailed) as exc:
            release_lease(admission.lease, handle)
            self._outputs.fail(
                handle,
                exc if isinstance(exc, InvalidSampling) else RequestFailed(str(exc)),
            )
            return None
        return _Row(handle, state)

    def _prefill(self, rows: list[_Row]) -> None:
        """One forward over the new prompts' first chunks; the complete ones start decoding.

        A batch of prompts that fails is retried one prompt at a time, so
        that only a prompt that cannot be run fails.
        """
        budget = self.config.prefill_budget
        lengths = [min(len(row.handle.request.prompt_ids), budget) for row in rows]
        prefill: Prefill | None = None
        try:
            prefill = self._runner.prefill([row.state for row in rows], lengths)
        except Exception as exc:
            if len(rows) == 1:
                logger.exception("the prefill of %s failed", rows[0].handle.request.request_id)
                self._fail_row(
                    rows[0], RequestFailed("the model failed on this request's prompt"), exc
                )
                return
            logger.warning(
                "a prefill of %d prompts on %s failed; retrying them one by one",
                len(rows),
                self.model_id,
                exc_info=True,
            )
        if prefill is None:
            # Outside the handler: a retry's own failure is not a consequence of this one.
            for row in rows:
                self._prefill([row])
            return
        self.stats.prefilled_tokens += sum(lengths)
        self._start_decoding(rows, prefill)

    def _prefill_more(self, row: _Row, budget: int) -> int:
        """The next chunk of a long prompt (or its end, if cancelled or late); the tokens spent."""
        handle = row.handle
        if handle.cancelled or past(handle.request.deadline):
            self._prefilling.remove(row)
            self._release(row)
            self._runner.retain(self._held_states())
            self._outputs.finish_unstarted(handle, "cancelled" if handle.cancelled else "timeout")
            return 0
        length = min(len(handle.request.prompt_ids) - row.state.prefilled, budget)
        try:
            prefill = self._runner.prefill([row.state], [length])
        except Exception as exc:
            logger.exception("a prefill chunk of %s failed", handle.request.request_id)
            self._prefilling.remove(row)
            self._fail_row(row, RequestFailed("the model failed on this request's prompt"), exc)
            return length
        self.stats.prefilled_tokens += length
        self._prefilling.remove(row)
        self._start_decoding([row], prefill)
        return length

    def _start_decoding(self, rows: list[_Row], prefill: Prefill) -> None:
        """Rows whose prompts are in the cache take their first token and join the batch.

        Rows with prompt left stay in ``_prefilling``; the others' cache rows
        are freed (a row ends at its first token, or its token failed).
        """
        complete = [
            i for i, row in enumerate(rows) if row.state.prefilled == len(row.state.prompt_ids)
        ]
        partial = [i for i in range(len(rows)) if i not in set(complete)]
        accepted = (
            self._accept_tokens(
                [rows[i] for i in complete], Logits(prefill.logits, tuple(complete))
            )
            if complete
            else []
        )
        keep = [complete[i] for i in accepted] + partial
        self._runner.join(prefill, keep)
        self._rows.extend(rows[complete[i]] for i in accepted)
        self._prefilling.extend(rows[i] for i in partial)
        self.stats.running = self._held_rows()

    def _decode_step(self) -> None:
        rows = self._rows
        try:
            logits = self._runner.decode([row.state for row in rows])
        except Exception as exc:
            # The runner dropped the cache, which may hold half a step: the batch cannot go on.
            logger.exception("a decode step of %s failed; failing its batch", self.model_id)
            self._fail_all("the model failed on a decode step of this request's batch", exc)
            return
        self.stats.steps += 1
        keep = self._accept_tokens(rows, logits)
        if len(keep) < len(rows):
            self._retain(keep)

    def _retain(self, keep: Sequence[int]) -> None:
        """Keep the rows ``keep`` of the batch (their slots are the caller's business)."""
        self._rows = [self._rows[index] for index in keep]
        self._runner.retain(self._held_states())
        self.stats.running = self._held_rows()

    def _held_states(self) -> list[RowState]:
        return [row.state for row in (*self._rows, *self._prefilling)]

    def _accept_tokens(self, rows: list[_Row], logits: Logits) -> list[int]:
        """Take each row's next token from its ``logits``; the indices that go on.

        The step's tokens go to the output processor in one message. A row
        whose token could not be sampled fails alone.
        """
        states = [row.state for row in rows]
        sampled = self._runner.sample(states, logits)
        measured = scores(states, logits, sampled)
        outputs: list[TokenOutput] = []
        keep: list[int] = []
        for index, (row, token) in enumerate(zip(rows, sampled, strict=True)):
            if isinstance(token, RequestFailed):
                self._fail_row(row, token)
                continue
            row.generated += 1
            self.stats.generated_tokens += 1
            eos = token in self.eos_token_ids
            reason = self._finish_reason(row, eos)
            if reason is None:
                row.state.pending_token = token
                keep.append(index)
            else:
                self._release(row)
            outputs.append(TokenOutput(row.handle, token, reason, eos, measured[index]))
        if outputs:
            self._outputs.step(outputs)
        return keep

    def _finish_reason(self, row: _Row, eos: bool) -> str | None:
        """Why the row ends with the token just sampled, on the model side; None: it goes on.

        A stop sequence is the output processor's to find (it overrides these).
        """
        if eos:
            return "stop"
        request = row.handle.request
        if (
            row.generated >= request.params.max_tokens
            or row.state.kv_length + 1 >= self.config.context_length
        ):
            return "length"
        if row.handle.cancelled:
            return "cancelled"
        if past(request.deadline):
            return "timeout"
        return None

    # Failures --------------------------------------------------------------------

    def _release(self, row: _Row) -> None:
        """Give the row's adapter slots back, once."""
        lease, row.state.lease = row.state.lease, None
        release_lease(lease, row.handle)

    def _fail_row(self, row: _Row, error: Exception, cause: BaseException | None = None) -> None:
        """Fail one request; its KV rows are dropped by the caller, as a finished row's are."""
        self._release(row)
        self._outputs.fail(row.handle, error, cause)

    def _fail_all(
        self, message: str, cause: BaseException | None, *, stopped: bool = False
    ) -> None:
        """Fail every running request (and, when the engine stops, every waiting one)."""
        rows, self._rows = [*self._rows, *self._prefilling], []
        self._prefilling = []
        self._runner.reset()
        self.stats.running = 0
        for row in rows:
            self._fail_row(
                row, EngineStopped(message) if stopped else RequestFailed(message), cause
            )
        if stopped:
            for handle in self._scheduler.drain():
                self._outputs.fail(handle, EngineStopped(message))

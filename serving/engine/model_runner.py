"""The model side of the engine: the forwards over the batch, and the tokens they give.

The runner owns the running batch's KV cache (``BatchKVCache``, one row per
running request, left-padded) and is the only code that calls the model. It
prefills new prompts together (left-padded to one width, merged into the
batch afterwards), decodes one token for every row at once, each row routed
through its own experts (``MultiLoraModel.routing``), and turns the last
logits into tokens: one batched finiteness check and argmax per step, a
per-request seeded sampler for the others. It knows token ids only, never
text: detokenizing and stop sequences are the output processor's.

Invariants: the cache's rows are the rows the engine passes to ``decode``, in
that order; ``join`` and ``retain`` are the only ways rows enter and leave.
A decode forward that raises leaves no half-written cache behind (the cache
is dropped, the engine fails the batch). ``sample`` never raises for a row:
a row whose logits are not finite, or whose sampler fails, gets a
``RequestFailed`` in place of its token, so it fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adapters.device.slot_cache import SlotLease
from serving.engine.errors import InvalidSampling, NonFiniteLogits, RequestFailed
from serving.engine.kv_cache import BatchKVCache
from serving.engine.sampling import MAX_SEED, MIN_SEED, SamplingParams, new_generator, sample_token

logger = logging.getLogger(__name__)

# Drop leading all-padding columns once they are this many and at least a
# quarter of the cache: each drop copies the cache, so not on every step.
TRIM_MIN_COLUMNS = 64


class RoutedModel(Protocol):
    """The multi-LoRA wrapper's routing, as the runner uses it."""

    def routing(self, expert_slots: Any, gate_slots: Any = None, *, check: bool = True) -> Any: ...


@dataclass
class RowState:
    """What the runner needs of one running request."""

    request_id: str  # for the logs only
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    generator: torch.Generator | None
    lease: SlotLease | None  # None: no adapters, or given back
    # The request asked for experts: non-finite logits then blame its adapter.
    adapted: bool
    kv_length: int  # this row's real tokens in the cache
    pending_token: int = -1  # sampled, not yet fed to the model


@dataclass(frozen=True)
class Prefill:
    """New prompts' last logits ``[rows, vocab]`` and their own cache, not yet in the batch."""

    logits: torch.Tensor
    cache: BatchKVCache


class ModelRunner:
    def __init__(self, model: torch.nn.Module, *, lora: RoutedModel | None = None) -> None:
        self.model = model
        self.lora = lora
        self.device = next(model.parameters()).device
        model_config: Any = model.config
        self.num_layers = int(model_config.num_hidden_layers)
        vocab_size = getattr(model_config, "vocab_size", None)
        self.vocab_size = vocab_size if isinstance(vocab_size, int) else None
        self._cache = BatchKVCache(self.num_layers)

    @property
    def cache(self) -> BatchKVCache:
        return self._cache

    def new_row(
        self,
        *,
        request_id: str,
        prompt_ids: tuple[int, ...],
        params: SamplingParams,
        lease: SlotLease | None,
        adapted: bool,
    ) -> RowState:
        """A row for a new request; ``InvalidSampling`` when its seed cannot seed a sampler."""
        try:
            generator = new_generator(params)
        except Exception as exc:
            # SamplingParams refuses such seeds: only a caller that skipped
            # the validation gets here, and it alone fails.
            raise InvalidSampling(
                f"seed {params.seed} cannot seed the sampler: "
                f"it must be an integer from {MIN_SEED} to {MAX_SEED}"
            ) from exc
        return RowState(
            request_id=request_id,
            prompt_ids=prompt_ids,
            params=params,
            generator=generator,
            lease=lease,
            adapted=adapted,
            kv_length=len(prompt_ids),
        )

    # Forwards ---------------------------------------------------------------------

    def prefill(self, rows: Sequence[RowState]) -> Prefill:
        """The prompts left-padded to one width: their last logits and their cache."""
        lengths = [row.kv_length for row in rows]
        width = max(lengths)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - lengths[index] :] = torch.tensor(row.prompt_ids)
            mask[index, width - lengths[index] :] = 1
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = BatchKVCache(self.num_layers)
        with self.routing([row.lease for row in rows]):
            output = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return Prefill(output.logits[:, -1], cache)

    def join(self, prefill: Prefill, keep: Sequence[int]) -> None:
        """Merge the rows ``keep`` of a prefill below the batch's rows."""
        if not keep:
            return
        cache = prefill.cache
        if len(keep) < prefill.logits.shape[0]:
            cache.select_rows(torch.tensor(list(keep), dtype=torch.long, device=self.device))
        self._cache.append_rows(cache)

    def decode(self, rows: Sequence[RowState]) -> torch.Tensor:
        """One step: every row's pending token in, its next logits ``[rows, vocab]`` out.

        ``rows`` are the batch's rows in cache order. On success each row's
        ``kv_length`` counts the token fed; on failure the cache is dropped
        (it may hold half a step) and the error propagates.
        """
        length = self._cache.length + 1
        kv_lengths = torch.tensor([row.kv_length + 1 for row in rows], device=self.device)
        columns = torch.arange(length, device=self.device)
        attention_mask = (columns.unsqueeze(0) >= length - kv_lengths.unsqueeze(1)).long()
        tokens = torch.tensor([[row.pending_token] for row in rows], device=self.device)
        try:
            with self.routing([row.lease for row in rows]):
                output = self.model(
                    input_ids=tokens,
                    attention_mask=attention_mask,
                    position_ids=(kv_lengths - 1).unsqueeze(1),
                    past_key_values=self._cache,
                    use_cache=True,
                )
        except BaseException:
            self.reset()
            raise
        for row in rows:
            row.kv_length += 1
        logits: torch.Tensor = output.logits[:, -1]
        return logits

    def retain(self, keep: Sequence[int], kept: Sequence[RowState]) -> None:
        """Keep only the cache rows ``keep`` (whose states are ``kept``), then trim padding."""
        if not kept:
            self.reset()
            return
        self._cache.select_rows(torch.tensor(list(keep), dtype=torch.long, device=self.device))
        padding = self._cache.length - max(row.kv_length for row in kept)
        if padding >= TRIM_MIN_COLUMNS and padding * 4 >= self._cache.length:
            self._cache.drop_leading(padding)

    def reset(self) -> None:
        """Drop every row of the batch."""
        self._cache = BatchKVCache(self.num_layers)

    def routing(self, leases: Sequence[SlotLease | None]) -> AbstractContextManager[Any]:
        """The multi-LoRA routing of one forward over rows holding ``leases``."""
        # Every expert position costs a rank's worth of compute in every
        # wrapped layer, so pass only as many as the widest row uses, and no
        # routing at all (the plain base forward) when no row has experts.
        width = max(
            (sum(1 for s in lease.expert_slots if s) for lease in leases if lease), default=0
        )
        if self.lora is None or width == 0:
            return nullcontext()
        expert_slots = [
            list(lease.expert_slots[:width]) if lease else [0] * width for lease in leases
        ]
        gate_slots = [lease.gate_slot if lease else 0 for lease in leases]
        # The gated path costs a gate matmul, a mask and a softmax in every
        # wrapped layer: only when some row has a gate (slot 0 = none).
        context: AbstractContextManager[Any] = self.lora.routing(
            expert_slots, gate_slots if any(gate_slots) else None, check=False
        )
        return context

    # Sampling ---------------------------------------------------------------------

    def sample(self, rows: Sequence[RowState], logits: torch.Tensor) -> list[int | RequestFailed]:
        """Each row's next token from ``logits [rows, vocab]``, or why it has none."""
        # One check and one argmax for the batch, not one per row.
        finite: list[bool] = torch.isfinite(logits).all(dim=-1).tolist()
        greedy: list[int] = logits.argmax(dim=-1).tolist()
        tokens: list[int | RequestFailed] = []
        for index, row in enumerate(rows):
            if not finite[index]:
                tokens.append(_non_finite(row))
            elif row.params.greedy:
                tokens.append(greedy[index])
            else:
                try:
                    tokens.append(sample_token(logits[index], row.params, row.generator))
                except Exception as exc:
                    logger.exception("sampling a token of %s failed", row.request_id)
                    failed = RequestFailed("generating this request's next token failed")
                    failed.__cause__ = exc
                    tokens.append(failed)
        return tokens


def _non_finite(row: RowState) -> NonFiniteLogits:
    if row.adapted:
        return NonFiniteLogits(
            "the model produced non-finite logits for this request; its adapter may be broken"
        )
    return NonFiniteLogits("the model produced non-finite logits for this request")

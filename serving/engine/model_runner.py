"""The model side of the engine: the forwards over the batch, and the tokens they give.

The runner owns the running batch's KV cache (``RowKVCache``: one fixed row
per running request, written in place) and is the only code that calls the
model. It prefills new prompts together (left-padded to one width, written
straight into the rows they take), decodes one token for every row at once,
each row routed through its own experts (``MultiLoraModel.routing``), and
turns the last logits into tokens: one batched finiteness check and argmax
per step, and one batched draw for the rows that sample, each with one
number from its own seeded generator (``sampling.sample_rows``). It knows token ids
only, never text: detokenizing and stop sequences are the output processor's.

The attention masks are built here, not by transformers: a 4-D mask (or one
per layer type, for sliding-window models) that shows each query its own
row's positions only. Decode steps read the first ``columns`` columns of
rows ``0..n``, both rounded up (``COLUMN_BLOCK``), so the shapes of a step
change rarely (attention kernels re-plan per shape) and not per token.

Invariants: a row's cache row is fixed from its prefill to its end; ``join``
(rows that start) and ``retain`` (rows that go on) are the only ways rows
enter and leave, and nothing else moves a row's history. A decode forward
that raises leaves every row dropped (the engine fails the batch). ``sample``
never raises for a row: a row whose logits are not finite, or whose sampler
fails, gets a ``RequestFailed`` in place of its token, so it fails alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adapters.device.slot_cache import SlotLease
from serving.engine.constraints import ConstraintFailed, Matcher
from serving.engine.cuda_graphs import (
    DecodeGraphs,
    GraphCaptureFailed,
    GraphKey,
    StepInputs,
    column_bucket,
    row_bucket,
)
from serving.engine.errors import InvalidSampling, NonFiniteLogits, RequestFailed
from serving.engine.kv_cache import CacheStep, RowKVCache
from serving.engine.requests import TokenScores
from serving.engine.sampling import (
    MAX_SEED,
    MIN_SEED,
    SamplingParams,
    draw,
    new_generator,
    sample_rows,
)

logger = logging.getLogger(__name__)

# Decode steps attend over a multiple of this many columns: the attention's
# shape changes once every this many tokens, not at every one.
COLUMN_BLOCK = 64
# Columns kept free past every row's writes: a hole writes in the last one.
SPARE_COLUMNS = 1


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
    kv_length: int  # this row's tokens in the cache once its prompt is prefilled
    pending_token: int = -1  # sampled, not yet fed to the model
    prefilled: int = 0  # prompt tokens in the cache (less than the prompt while chunked)
    cache_row: int = -1  # its row of the KV cache, from its prefill on
    # The grammar its output follows (a JSON response format); None: free text.
    constraint: Matcher | None = None


@dataclass(frozen=True)
class Logits:
    """The last logits of some rows: row ``i``'s are ``table[at[i]]``.

    A decode step's table has a row per cache row (holes included) and is
    the step's own output, valid until the next decode: the rows are read
    where they lie instead of being copied into the batch's order, which
    for a batch of 256 would copy 50 MB a step.
    """

    table: torch.Tensor
    at: tuple[int, ...]

    @classmethod
    def dense(cls, table: torch.Tensor) -> Logits:
        """Rows in the table's own order."""
        return cls(table, tuple(range(table.shape[0])))

    def ordered(self) -> torch.Tensor:
        """``[rows, vocab]`` in the rows' order (a copy, unless already so)."""
        if self.at == tuple(range(len(self.at))):
            return self.table[: len(self.at)]
        return self.table.index_select(0, self._index(self.at))

    def select(self, rows: Sequence[int]) -> torch.Tensor:
        """``[len(rows), vocab]``: the logits of the rows ``rows`` (indices into ``at``)."""
        return self.table.index_select(0, self._index([self.at[i] for i in rows]))

    def _index(self, positions: Sequence[int]) -> torch.Tensor:
        return torch.tensor(positions, dtype=torch.long, device=self.table.device)


@dataclass(frozen=True)
class Prefill:
    """New prompts' last logits ``[rows, vocab]``; their rows hold their cache, not yet running."""

    logits: torch.Tensor
    rows: tuple[RowState, ...]


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        *,
        lora: RoutedModel | None = None,
        max_rows: int = 32,
        context_length: int = 2048,
        cuda_graphs: bool = False,
    ) -> None:
        self.model = model
        self.lora = lora
        self.device = next(model.parameters()).device
        model_config: Any = model.config
        self.num_layers = int(model_config.num_hidden_layers)
        vocab_size = getattr(model_config, "vocab_size", None)
        self.vocab_size = vocab_size if isinstance(vocab_size, int) else None
        self.max_rows = max_rows
        self.context_length = context_length
        self._sliding_window = _sliding_window(model_config)
        self._cache = RowKVCache(self.num_layers, max_rows=max_rows, max_columns=context_length)
        # _rows[i] holds cache row i: a running request, a prefilled one not
        # yet joined, or None (free).
        self._rows: list[RowState | None] = [None] * max_rows
        # Static index tensors: a decode step's rows and columns are slices of these.
        self._row_index = torch.arange(max_rows, device=self.device)
        self._column_index = torch.arange(context_length, device=self.device)
        self._graphs: DecodeGraphs | None = None
        if cuda_graphs and self.device.type == "cuda":
            self._graphs = DecodeGraphs(self._step, self.device)
            self._cache.reserve()  # a recorded graph holds the cache's addresses

    @property
    def cache(self) -> RowKVCache:
        return self._cache

    @property
    def graphs_recorded(self) -> int:
        """How many decode steps have a recorded CUDA graph (0 when graphs are off)."""
        return 0 if self._graphs is None else len(self._graphs)

    @property
    def rows_in_use(self) -> int:
        return sum(row is not None for row in self._rows)

    def new_row(
        self,
        *,
        request_id: str,
        prompt_ids: tuple[int, ...],
        params: SamplingParams,
        lease: SlotLease | None,
        adapted: bool,
        constraint: Matcher | None = None,
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
            constraint=constraint,
        )

    # Forwards ---------------------------------------------------------------------

    def prefill(self, rows: Sequence[RowState], lengths: Sequence[int] | None = None) -> Prefill:
        """Each row's next ``lengths[i]`` prompt tokens (all the rest when None): last logits.

        New prompts go together, left-padded to one width, into free cache
        rows. A prompt already partly prefilled (chunked: longer than the
        engine's prefill budget) goes on alone, after its prefix. A row whose
        ``prefilled`` reaches its prompt's length is ready to decode.
        """
        if lengths is None:
            lengths = [len(row.prompt_ids) - row.prefilled for row in rows]
        if any(row.prefilled for row in rows):
            if len(rows) != 1:
                raise ValueError("a partly prefilled prompt goes on alone")
            return self._prefill_more(rows[0], lengths[0])
        width = max(lengths)
        free = [index for index, held in enumerate(self._rows) if held is None]
        if len(free) < len(rows):
            raise RuntimeError(f"{len(rows)} prompts but {len(free)} free cache rows")
        taken = free[: len(rows)]
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        for index, row in enumerate(rows):
            chunk = row.prompt_ids[: lengths[index]]
            ids[index, width - lengths[index] :] = torch.tensor(chunk)
            real[index, width - lengths[index] :] = True
        positions = real.long().cumsum(dim=-1) - 1  # -1 on the padding
        # A padding column is written past its chunk's end (length + its
        # column), where the row's own later writes replace it before it is seen.
        lengths_t = torch.tensor(list(lengths)).unsqueeze(1)
        write = torch.where(real, positions, lengths_t + torch.arange(width))
        self._cache.ensure(max(taken) + 1, width + SPARE_COLUMNS)
        self._cache.step = CacheStep(
            rows=torch.tensor(taken, device=self.device),
            positions=write.to(self.device),
            columns=None,
        )
        for row, index in zip(rows, taken, strict=True):
            row.cache_row = index
            self._rows[index] = row
        try:
            with self.routing([row.lease for row in rows]):
                on_device = positions.to(self.device)
                logits = self._forward(
                    ids.to(self.device),
                    on_device.clamp(min=0),
                    self._masks(on_device, on_device, real.to(self.device)),
                    prompt=True,
                )
        except BaseException:
            self._free(rows)
            raise
        finally:
            self._cache.step = None
        for row, length in zip(rows, lengths, strict=True):
            row.prefilled = length
        return Prefill(logits, tuple(rows))

    def _prefill_more(self, row: RowState, length: int) -> Prefill:
        """The next ``length`` tokens of a partly prefilled prompt, attending over its row."""
        start, end = row.prefilled, row.prefilled + length
        if length < 1 or end > len(row.prompt_ids):
            raise ValueError(f"{length} more tokens of a prompt with {len(row.prompt_ids)}")
        ids = torch.tensor([row.prompt_ids[start:end]], device=self.device)
        positions = torch.arange(start, end, device=self.device).unsqueeze(0)
        self._cache.ensure(row.cache_row + 1, end + SPARE_COLUMNS)
        self._cache.step = CacheStep(
            rows=torch.tensor([row.cache_row], device=self.device),
            positions=positions,
            columns=end,
            read_rows=slice(row.cache_row, row.cache_row + 1),
        )
        try:
            with self.routing([row.lease]):
                logits = self._forward(
                    ids,
                    positions,
                    self._masks(positions, self._column_index[:end].unsqueeze(0), None),
                    prompt=True,
                )
        except BaseException:
            self._free([row])
            raise
        finally:
            self._cache.step = None
        row.prefilled = end
        return Prefill(logits, (row,))

    def join(self, prefill: Prefill, keep: Sequence[int]) -> None:
        """The rows ``keep`` of a prefill start running; the others' cache rows are freed."""
        kept = set(keep)
        self._free([row for index, row in enumerate(prefill.rows) if index not in kept])

    def decode(self, rows: Sequence[RowState]) -> Logits:
        """One step: every row's pending token in, its next logits out (valid until the next).

        On success each row's ``kv_length`` counts the token fed; on failure
        every row is dropped and the error propagates.
        """
        span = max(row.cache_row for row in rows) + 1
        longest = max(row.kv_length for row in rows) + 1
        bucket = None if self._graphs is None else row_bucket(span, self.max_rows)
        if bucket is not None:
            span, columns = bucket, column_bucket(longest, self.context_length)
        else:
            columns = min(_round_up(longest, COLUMN_BLOCK), self.context_length)
        self._cache.ensure(span, max(columns, longest + SPARE_COLUMNS))
        # Built as lists, then one tensor each: a Python loop of tensor item
        # writes costs microseconds a row, a step's worth at a batch of 256.
        tokens = [0] * span
        # A hole writes in the last column, which no row has written (kv_cache.py).
        positions = [self._cache.column_capacity - 1] * span
        leases: list[SlotLease | None] = [None] * span
        for row in rows:
            tokens[row.cache_row] = row.pending_token
            positions[row.cache_row] = row.kv_length
            leases[row.cache_row] = row.lease
        expert_slots, gate_slots = self._route_tensors(leases)
        inputs = StepInputs(
            tokens=torch.tensor(tokens).unsqueeze(1),
            positions=torch.tensor(positions).unsqueeze(1),
            expert_slots=expert_slots,
            gate_slots=gate_slots,
        )
        try:
            all_logits = None
            if bucket is not None:
                key = GraphKey(
                    rows=span,
                    columns=columns,
                    width=0 if expert_slots is None else expert_slots.shape[1],
                    gated=gate_slots is not None,
                )
                all_logits = self._replay(key, inputs)
            if all_logits is None:
                all_logits = self._step(inputs.to(self.device), columns)
        except BaseException:
            self.reset()
            raise
        finally:
            self._cache.step = None
        for row in rows:
            row.kv_length += 1
        return Logits(all_logits, tuple(row.cache_row for row in rows))

    def _step(self, inputs: StepInputs, columns: int) -> torch.Tensor:
        """The decode forward over cache rows ``0..rows``: the last logits ``[rows, vocab]``.

        Device tensors in and no host sync inside, so ``DecodeGraphs`` records it as is.
        """
        rows = inputs.tokens.shape[0]
        self._cache.step = CacheStep(
            rows=self._row_index[:rows], positions=inputs.positions, columns=columns
        )
        key_positions = self._column_index[:columns].unsqueeze(0)
        routing: AbstractContextManager[Any] = nullcontext()
        if self.lora is not None and inputs.expert_slots is not None:
            routing = self.lora.routing(inputs.expert_slots, inputs.gate_slots, check=False)
        with routing:
            return self._forward(
                inputs.tokens,
                inputs.positions,
                self._masks(inputs.positions, key_positions, None),
                prompt=False,
            )

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        masks: torch.Tensor | dict[str, torch.Tensor],
        *,
        prompt: bool,
    ) -> torch.Tensor:
        """The model over ``ids [B, L]`` into the cache's step: the last logits ``[B, vocab]``.

        ``prompt``: a prefill, whose logits are kept for its last position only.
        """
        output = self.model(
            input_ids=ids,
            attention_mask=masks,
            position_ids=positions,
            past_key_values=self._cache,
            use_cache=True,
            **({"logits_to_keep": 1} if prompt else {}),
        )
        logits: torch.Tensor = output.logits[:, -1]
        return logits

    def _replay(self, key: GraphKey, inputs: StepInputs) -> torch.Tensor | None:
        """The step from its CUDA graph; None when it cannot be recorded (then never again)."""
        assert self._graphs is not None
        try:
            return self._graphs.run(key, inputs)
        except GraphCaptureFailed:
            logger.exception("recording a CUDA graph failed; decoding eagerly from now on")
            self._graphs = None
            return None

    def retain(self, kept: Sequence[RowState]) -> None:
        """Only the rows ``kept`` go on; every other running row's cache row is freed."""
        keep = {id(row) for row in kept}
        self._free([row for row in self._rows if row is not None and id(row) not in keep])

    def reset(self) -> None:
        """Drop every row of the batch (the cache's memory is kept for the next ones)."""
        self._free([row for row in self._rows if row is not None])

    def _free(self, rows: Sequence[RowState]) -> None:
        for row in rows:
            if 0 <= row.cache_row < len(self._rows) and self._rows[row.cache_row] is row:
                self._rows[row.cache_row] = None
            row.cache_row = -1

    def _masks(
        self,
        query_positions: torch.Tensor,
        key_positions: torch.Tensor,
        key_real: torch.Tensor | None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Additive 4-D masks ``[B, 1, L, K]``: each query sees its row's keys up to its position.

        ``query_positions [B, L]``, ``key_positions [B or 1, K]``; ``key_real``
        marks the keys that are tokens (None: every key up to the position
        is). A query that would see nothing (a padding column) sees itself,
        so that no softmax runs over an empty row.
        """
        q = query_positions.unsqueeze(-1)  # [B, L, 1]
        k = key_positions.unsqueeze(1)  # [B, 1, K]
        allowed = k <= q
        if key_real is not None:  # a prefill: its keys are its own queries
            itself = torch.eye(allowed.shape[-1], dtype=torch.bool, device=q.device)
            allowed = (allowed & key_real.unsqueeze(1)) | itself
        full = _additive(allowed, self._dtype())
        if self._sliding_window is None:
            return full
        sliding = _additive(allowed & (q - k < self._sliding_window), self._dtype())
        return {"full_attention": full, "sliding_attention": sliding}

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def routing(self, leases: Sequence[SlotLease | None]) -> AbstractContextManager[Any]:
        """The multi-LoRA routing of one forward over rows holding ``leases``."""
        expert_slots, gate_slots = self._route_tensors(leases)
        if self.lora is None or expert_slots is None:
            return nullcontext()
        context: AbstractContextManager[Any] = self.lora.routing(
            expert_slots, gate_slots, check=False
        )
        return context

    def _route_tensors(
        self, leases: Sequence[SlotLease | None]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The rows' expert slots ``[rows, width]`` and gate slots ``[rows]``, on the host.

        None for the experts when no row has any (the plain base forward);
        None for the gates when no row has one.
        """
        # Every expert position costs a rank's worth of compute in every
        # wrapped layer, so pass only as many as the widest row uses.
        width = max(
            (sum(1 for s in lease.expert_slots if s) for lease in leases if lease), default=0
        )
        if self.lora is None or width == 0:
            return None, None
        expert_slots = torch.tensor(
            [list(lease.expert_slots[:width]) if lease else [0] * width for lease in leases],
            dtype=torch.long,
        )
        gate_slots = [lease.gate_slot if lease else 0 for lease in leases]
        # The gated path costs a gate matmul, a mask and a softmax in every
        # wrapped layer: only when some row has a gate (slot 0 = none).
        if not any(gate_slots):
            return expert_slots, None
        return expert_slots, torch.tensor(gate_slots, dtype=torch.long)

    # Sampling ---------------------------------------------------------------------

    def sample(self, rows: Sequence[RowState], logits: Logits) -> list[int | RequestFailed]:
        """Each row's next token from its ``logits``, or why it has none."""
        table = logits.table
        # One pass each over the whole table for the batch, not one per row: a
        # row's sum is finite only if all its logits are (and no float32 sum
        # of real logits overflows), and the greedy token.
        finite: list[bool] = torch.isfinite(table.sum(dim=-1, dtype=torch.float32)).tolist()
        greedy: list[int] = table.argmax(dim=-1).tolist()
        tokens: list[int | RequestFailed] = [
            greedy[at] if finite[at] else _non_finite(row)
            for row, at in zip(rows, logits.at, strict=True)
        ]
        for i, row in enumerate(rows):
            if row.constraint is not None and finite[logits.at[i]]:
                tokens[i] = self._sample_constrained(row, logits.select([i]))
        sampling = [
            i
            for i, row in enumerate(rows)
            if finite[logits.at[i]] and not row.params.greedy and row.constraint is None
        ]
        if not sampling:
            return tokens
        # Each row's one random number, drawn once: a retry below reuses it.
        uniforms = [_draw(rows[i]) for i in sampling]
        try:
            drawn: list[int | RequestFailed] = list(
                sample_rows(logits.select(sampling), [rows[i].params for i in sampling], uniforms)
            )
        except Exception:
            logger.warning("sampling a batch of %d rows failed; row by row", len(sampling))
            drawn = [
                self._sample_one(rows[i], logits.select([i]), uniform)
                for i, uniform in zip(sampling, uniforms, strict=True)
            ]
        for i, token in zip(sampling, drawn, strict=True):
            tokens[i] = token
        return tokens

    @staticmethod
    def _sample_constrained(row: RowState, logits: torch.Tensor) -> int | RequestFailed:
        """A constrained row's token among those its grammar allows; the matcher moves past it.

        Row by row: constrained requests are few beside free text, and each
        row's failure stays its own.
        """
        assert row.constraint is not None
        try:
            allowed = row.constraint.allowed().to(logits.device)
            scores = logits.float().masked_fill(~allowed, -math.inf)
            if row.params.greedy:
                token = int(scores.argmax())
            else:
                token = sample_rows(scores, [row.params], [_draw(row)])[0]
            row.constraint.accept(token)
        except ConstraintFailed as exc:
            logger.warning("the response format of %s failed: %s", row.request_id, exc)
            failed = RequestFailed(f"the output could not follow the response format: {exc}")
            failed.__cause__ = exc
            return failed
        except Exception as exc:
            logger.exception("sampling a constrained token of %s failed", row.request_id)
            failed = RequestFailed("generating this request's next token failed")
            failed.__cause__ = exc
            return failed
        return token

    @staticmethod
    def _sample_one(row: RowState, logits: torch.Tensor, uniform: float) -> int | RequestFailed:
        """One row's token alone, or the failure that is its own."""
        try:
            return sample_rows(logits, [row.params], [uniform])[0]
        except Exception as exc:
            logger.exception("sampling a token of %s failed", row.request_id)
            failed = RequestFailed("generating this request's next token failed")
            failed.__cause__ = exc
            return failed


def scores(
    rows: Sequence[RowState], logits: Logits, tokens: Sequence[int | RequestFailed]
) -> list[TokenScores | None]:
    """Each sampled token's log-probability and its row's top alternatives, for rows that ask.

    Log-probabilities of the model's own distribution (before temperature and
    top-p), as OpenAI reports them; one log-softmax and one top-k for every
    asking row of the step at once.
    """
    asking = [
        i
        for i, row in enumerate(rows)
        if row.params.logprobs is not None and isinstance(tokens[i], int)
    ]
    out: list[TokenScores | None] = [None] * len(rows)
    if not asking:
        return out
    logprobs = torch.log_softmax(logits.select(asking).float(), dim=-1)
    chosen_ids = torch.tensor([tokens[i] for i in asking], device=logprobs.device).unsqueeze(1)
    chosen: list[float] = logprobs.gather(1, chosen_ids).squeeze(1).tolist()
    k = max(rows[i].params.logprobs or 0 for i in asking)
    top_values: list[list[float]] = [[] for _ in asking]
    top_ids: list[list[int]] = [[] for _ in asking]
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    for j, i in enumerate(asking):
        wanted = rows[i].params.logprobs or 0
        top = tuple(zip(top_ids[j][:wanted], top_values[j][:wanted], strict=True))
        out[i] = TokenScores(chosen[j], top)
    return out


def _draw(row: RowState) -> float:
    assert row.generator is not None  # every sampling row has one (new_row)
    return draw(row.generator)


def _non_finite(row: RowState) -> NonFiniteLogits:
    if row.adapted:
        return NonFiniteLogits(
            "the model produced non-finite logits for this request; its adapter may be broken"
        )
    return NonFiniteLogits("the model produced non-finite logits for this request")


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, L, K]`` booleans as an additive ``[B, 1, L, K]`` mask (eager and SDPA both take it)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _sliding_window(config: Any) -> int | None:
    """The window of the model's sliding-attention layers, if it has any."""
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types and isinstance(window, int):
        return window
    return None

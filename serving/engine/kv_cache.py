"""The running batch's KV cache: fixed rows, one per running request, written in place.

Each layer keeps its keys and values in one tensor ``[rows, kv_heads,
capacity, head_dim]``. A request holds one row from its prefill to its end:
its token at position ``p`` lives in column ``p`` of its row, so a request
joining or leaving the batch moves no other row's history, and a decode step
writes one column per row in place. Rows and columns grow by doubling when a
batch or a sequence first needs more (a few times in a server's life, never
per step), so the embedded CPU default holds only what it has used; a GPU
server can reserve everything up front (``reserve``) and then no tensor is
ever reallocated, which is what a captured CUDA graph needs.

What a forward reads and writes is set per forward by the runner
(``CacheStep``):

- a *prefill* writes the new prompts into their rows (left-padded prompts; a
  padding column is written past the prompt's end, where the row's own decode
  steps overwrite it before any query can see it) and attends over the
  prompts' own keys, so no other row is read;
- a prompt longer than the prefill budget is prefilled in chunks: its later
  chunks run alone, written after its prefix and attending over its own row;
- a *decode* step runs over rows ``0..n`` of the cache, holes included (a
  hole is a row that decodes nothing: free, or a prompt still being
  prefilled), writes each row's new token at its position and attends over
  the first ``columns`` columns of every row, the mask hiding what lies past
  each row's position. A hole writes in the last column of the capacity,
  which no row has written yet (the runner keeps a column spare): whatever
  it leaves there, the row's own writes replace before the row reads it.

Invariants: a row's columns ``0..kv_length`` are its request's tokens and
nothing else writes them while it runs; its other columns are zeros or its
own padding from the moment its prefill writes it (an earlier request's
leftovers, NaNs of a broken adapter included, are cleared then), and the
mask hides them.
Every layer is treated as full attention in storage; a sliding-window layer
(Gemma-3) gets its window from its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

MIN_ROWS = 4
MIN_COLUMNS = 64


@dataclass(frozen=True)
class CacheStep:
    """Where one forward writes, and what its attention reads.

    ``rows [B]`` are the cache rows of the forward's batch rows and
    ``positions [B, L]`` the column each input token is written to. With
    ``columns`` None (new prompts) attention reads the forward's own keys;
    else it reads the first ``columns`` columns of the cache rows
    ``read_rows`` (a decode step: rows ``0..B``; a prompt's later chunk: its
    own row, prefix included).
    """

    rows: torch.Tensor
    positions: torch.Tensor
    columns: int | None
    read_rows: slice | None = None


class RowLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One decoder layer's keys and values ``[rows, kv_heads, capacity, head_dim]``."""

    def __init__(self, cache: RowKVCache) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._cache = cache
        self.key_rows: torch.Tensor | None = None
        self.value_rows: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        rows, columns = self._cache.row_capacity, self._cache.column_capacity
        self.key_rows = _empty(key_states, rows, columns)
        self.value_rows = _empty(value_states, rows, columns)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        step = self._cache.step
        if step is None:
            raise RuntimeError("the runner sets a CacheStep before every forward")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.key_rows is not None and self.value_rows is not None
        # [B, H, L, D] written at (row, column) pairs of a [rows, columns, H, D] view.
        index = (step.rows.unsqueeze(1).expand_as(step.positions), step.positions)
        self.key_rows.transpose(1, 2).index_put_(index, key_states.transpose(1, 2))
        self.value_rows.transpose(1, 2).index_put_(index, value_states.transpose(1, 2))
        if step.columns is None:
            # A prefill: the rows' columns past the prompt still hold an earlier
            # request's keys, which the mask hides but cannot neutralise if they
            # are not finite (a NaN times a zero weight is NaN). Clear them.
            width = key_states.shape[2]
            self.key_rows[step.rows, :, width:] = 0
            self.value_rows[step.rows, :, width:] = 0
            return key_states, value_states
        read = slice(0, step.rows.shape[0]) if step.read_rows is None else step.read_rows
        return (
            self.key_rows[read, :, : step.columns],
            self.value_rows[read, :, : step.columns],
        )

    def get_seq_length(self) -> int:
        return 0  # positions are per row and passed explicitly; nothing reads this

    def grow(self, rows: int, columns: int) -> None:
        """Copy into tensors of ``rows x columns``; a no-op before the first write."""
        if self.key_rows is None or self.value_rows is None:
            return
        self.key_rows = _grown(self.key_rows, rows, columns)
        self.value_rows = _grown(self.value_rows, rows, columns)


def _empty(states: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    # Zeros, not empty: a hole's attention reads column 0 of its row, which
    # must be finite.
    _, heads, _, head_dim = states.shape
    return states.new_zeros((rows, heads, columns, head_dim))


def _grown(tensor: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    old_rows, heads, old_columns, head_dim = tensor.shape
    grown = tensor.new_zeros((rows, heads, columns, head_dim))
    grown[:old_rows, :, :old_columns] = tensor
    return grown


class RowKVCache(Cache):
    """A ``RowLayer`` per decoder layer, and the rows' capacity they share."""

    def __init__(self, num_layers: int, *, max_rows: int, max_columns: int) -> None:
        self.max_rows = max_rows
        self.max_columns = max_columns
        self.row_capacity = min(MIN_ROWS, max_rows)
        self.column_capacity = min(MIN_COLUMNS, max_columns)
        self.step: CacheStep | None = None
        super().__init__(layers=[RowLayer(self) for _ in range(num_layers)])

    @property
    def row_layers(self) -> list[RowLayer]:
        layers: list[RowLayer] = self.layers  # type: ignore[assignment]
        return layers

    def ensure(self, rows: int, columns: int) -> None:
        """Room for rows ``0..rows`` and columns ``0..columns``, doubling what is short."""
        if rows > self.max_rows or columns > self.max_columns:
            raise ValueError(
                f"the cache holds at most {self.max_rows} rows of {self.max_columns} "
                f"columns; asked for {rows} x {columns}"
            )
        if rows <= self.row_capacity and columns <= self.column_capacity:
            return
        while self.row_capacity < rows:
            self.row_capacity = min(self.row_capacity * 2, self.max_rows)
        while self.column_capacity < columns:
            self.column_capacity = min(self.column_capacity * 2, self.max_columns)
        for layer in self.row_layers:
            layer.grow(self.row_capacity, self.column_capacity)

    def reserve(self) -> None:
        """Take the whole budget now, so that no later step reallocates."""
        self.ensure(self.max_rows, self.max_columns)

    def tensors(self) -> list[torch.Tensor]:
        """Every allocated key and value tensor (to check that none was reallocated)."""
        out: list[torch.Tensor] = []
        for layer in self.row_layers:
            if layer.key_rows is not None and layer.value_rows is not None:
                out += [layer.key_rows, layer.value_rows]
        return out

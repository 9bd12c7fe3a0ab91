"""A batched KV cache whose rows can join and leave between decode steps.

transformers' ``DynamicCache`` concatenates on every step and knows nothing
of rows that come and go. Here each layer keeps its keys and values in a
preallocated slab that grows by doubling, so a decode step writes one column
in place; the engine merges a newly prefilled request in (left-padding the
shorter side, which the attention mask hides) and drops finished rows.

Every layer is a full-attention layer: a sliding-window model (Gemma-3) still
gets its window from the attention mask, at the price of keeping the whole
history, which lets all layers share one length and one padding layout.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

MIN_CAPACITY = 64


class SlabLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's keys and values in a slab ``[batch, heads, capacity, head_dim]``."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.length = 0
        self._keys_slab: torch.Tensor | None = None
        self._values_slab: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self._keys_slab = key_states.new_zeros(_slab_shape(key_states, MIN_CAPACITY))
        self._values_slab = value_states.new_zeros(_slab_shape(value_states, MIN_CAPACITY))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        self._reserve(self.length + new)
        assert self._keys_slab is not None and self._values_slab is not None
        self._keys_slab[:, :, self.length : self.length + new] = key_states
        self._values_slab[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._refresh_views()
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def _reserve(self, needed: int) -> None:
        assert self._keys_slab is not None and self._values_slab is not None
        capacity = self._keys_slab.shape[2]
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        self._keys_slab = _resized(self._keys_slab, capacity, self.length)
        self._values_slab = _resized(self._values_slab, capacity, self.length)

    def _refresh_views(self) -> None:
        assert self._keys_slab is not None and self._values_slab is not None
        self.keys = self._keys_slab[:, :, : self.length]
        self.values = self._values_slab[:, :, : self.length]

    # Row operations, used by the engine between steps ------------------------

    def select_rows(self, rows: torch.Tensor) -> None:
        if self._keys_slab is None or self._values_slab is None:
            return
        self._keys_slab = self._keys_slab[rows]
        self._values_slab = self._values_slab[rows]
        self._refresh_views()

    def drop_leading(self, columns: int) -> None:
        """Forget the first ``columns`` positions (padding in every row)."""
        if columns <= 0 or self._keys_slab is None or self._values_slab is None:
            return
        self._keys_slab = self._keys_slab[:, :, columns:].contiguous()
        self._values_slab = self._values_slab[:, :, columns:].contiguous()
        self.length -= columns
        self._refresh_views()

    def append_rows(self, other: SlabLayer) -> None:
        """Add ``other``'s rows below ours, right-aligning both histories."""
        if other._keys_slab is None or other._values_slab is None:
            return
        if self._keys_slab is None or self._values_slab is None:
            # An empty batch simply takes over the other's rows.
            self.device, self.dtype, self.is_initialized = other.device, other.dtype, True
            self._keys_slab, self._values_slab = other._keys_slab, other._values_slab
            self.length = other.length
            self._refresh_views()
            return
        length = max(self.length, other.length)
        assert self.keys is not None and self.values is not None
        assert other.keys is not None and other.values is not None
        self._keys_slab = _stack_right_aligned(self.keys, other.keys, length)
        self._values_slab = _stack_right_aligned(self.values, other.values, length)
        self.length = length
        self._refresh_views()


def _slab_shape(states: torch.Tensor, capacity: int) -> tuple[int, int, int, int]:
    batch, heads, _, head_dim = states.shape
    return (batch, heads, capacity, head_dim)


def _resized(slab: torch.Tensor, capacity: int, used: int) -> torch.Tensor:
    grown = slab.new_zeros((slab.shape[0], slab.shape[1], capacity, slab.shape[3]))
    grown[:, :, :used] = slab[:, :, :used]
    return grown


def _stack_right_aligned(top: torch.Tensor, bottom: torch.Tensor, length: int) -> torch.Tensor:
    capacity = max(MIN_CAPACITY, 1 << (length - 1).bit_length())
    rows = top.shape[0] + bottom.shape[0]
    stacked = top.new_zeros((rows, top.shape[1], capacity, top.shape[3]))
    stacked[: top.shape[0], :, length - top.shape[2] : length] = top
    stacked[top.shape[0] :, :, length - bottom.shape[2] : length] = bottom
    return stacked


class BatchKVCache(Cache):
    """A cache of ``SlabLayer``s, one per decoder layer."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[SlabLayer() for _ in range(num_layers)])

    @property
    def slab_layers(self) -> list[SlabLayer]:
        layers: list[SlabLayer] = self.layers  # type: ignore[assignment]
        return layers

    @property
    def length(self) -> int:
        return self.slab_layers[0].length

    def select_rows(self, rows: torch.Tensor) -> None:
        for layer in self.slab_layers:
            layer.select_rows(rows)

    def drop_leading(self, columns: int) -> None:
        for layer in self.slab_layers:
            layer.drop_leading(columns)

    def append_rows(self, other: BatchKVCache) -> None:
        for mine, theirs in zip(self.slab_layers, other.slab_layers, strict=True):
            mine.append_rows(theirs)

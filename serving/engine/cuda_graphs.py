"""Decode steps replayed from CUDA graphs, one per shape the batch has taken.

An eager decode step launches every kernel of the model from Python: about
1,200 launches for SmolLM2-135M, during which the GPU mostly waits. A CUDA
graph records the launches once and replays them with one call. A graph is
bound to the addresses and shapes it was recorded with, so:

- the inputs live in static tensors that a step fills before replaying
  (tokens, positions, the rows' expert and gate slots), and the KV cache is
  reserved whole before the first capture (``RowKVCache.reserve``), so its
  tensors never move;
- a graph exists per ``GraphKey``: the rows rounded up to a bucket
  (``ROW_BUCKETS``; the extra rows are holes whose tokens nobody reads), the
  columns attended (a power of two), the routing width (0 = the base model)
  and whether a gate runs. Graphs are recorded when a key is first met, into
  one memory pool, so a server warms up as it meets new shapes.

Recording needs the step's kernels to have run once outside the graph (warm
up). That run is a real decode step on the real inputs: it writes the very
keys and values the replay then writes again, so it changes nothing.

Invariants: a replay reads only the static inputs; the logits it returns are
the graph's own output tensor, valid until the next replay (the engine
samples from it before the next step). Only CUDA: on the CPU the runner
runs its steps eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MIN_COLUMNS = 64


@dataclass(frozen=True)
class GraphKey:
    rows: int
    columns: int
    width: int  # expert positions per row; 0 = no adapters
    gated: bool


@dataclass(frozen=True)
class StepInputs:
    """The static inputs of one graph: a step copies its values in, then replays."""

    tokens: torch.Tensor  # [rows, 1]
    positions: torch.Tensor  # [rows, 1]
    expert_slots: torch.Tensor | None  # [rows, width]
    gate_slots: torch.Tensor | None  # [rows]

    def to(self, device: torch.device) -> StepInputs:
        return StepInputs(
            tokens=self.tokens.to(device),
            positions=self.positions.to(device),
            expert_slots=None if self.expert_slots is None else self.expert_slots.to(device),
            gate_slots=None if self.gate_slots is None else self.gate_slots.to(device),
        )


class GraphCaptureFailed(RuntimeError):
    """A step could not be recorded (an op that cannot be captured, or memory)."""


# The eager step a graph records: static inputs and the columns in, logits out.
StepForward = Callable[[StepInputs, int], torch.Tensor]


def row_bucket(rows: int, max_rows: int) -> int | None:
    """The graph's rows for a step over ``rows`` rows; None: too many, run eagerly."""
    for bucket in ROW_BUCKETS:
        if bucket >= rows:
            return bucket if bucket <= max_rows else None
    return None


def column_bucket(columns: int, max_columns: int) -> int:
    """The columns a graph attends over: the next power of two, at most the cache's."""
    bucket = MIN_COLUMNS
    while bucket < columns:
        bucket *= 2
    return min(bucket, max_columns)


class _Graph:
    def __init__(self, inputs: StepInputs, graph: torch.cuda.CUDAGraph, logits: torch.Tensor):
        self.inputs = inputs
        self.graph = graph
        self.logits = logits


class DecodeGraphs:
    """The recorded decode steps of one model runner."""

    def __init__(self, forward: StepForward, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self._forward = forward
        self._device = device
        self._graphs: dict[GraphKey, _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: GraphKey, step: StepInputs) -> torch.Tensor:
        """The step's logits ``[rows, vocab]``: ``step`` (host tensors) copied in, replayed."""
        graph = self._graphs.get(key)
        if graph is None:
            inputs = self._static_inputs(key)
            _fill(inputs, step)
            try:
                graph = self._record(key, inputs)
            except Exception as exc:
                raise GraphCaptureFailed(f"recording the decode step {key} failed") from exc
            self._graphs[key] = graph
        else:
            _fill(graph.inputs, step)
        graph.graph.replay()
        return graph.logits

    def _static_inputs(self, key: GraphKey) -> StepInputs:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.long, device=self._device)

        return StepInputs(
            tokens=zeros(key.rows, 1),
            positions=zeros(key.rows, 1),
            expert_slots=zeros(key.rows, key.width) if key.width else None,
            gate_slots=zeros(key.rows) if key.gated else None,
        )

    def _record(self, key: GraphKey, inputs: StepInputs) -> _Graph:
        # Warm up on a side stream, as capture requires; a real step (see the docstring).
        stream = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            self._forward(inputs, key.columns)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(inputs, key.columns)
        return _Graph(inputs, graph, logits)


def _fill(inputs: StepInputs, step: StepInputs) -> None:
    inputs.tokens.copy_(step.tokens, non_blocking=True)
    inputs.positions.copy_(step.positions, non_blocking=True)
    if inputs.expert_slots is not None and step.expert_slots is not None:
        inputs.expert_slots.copy_(step.expert_slots, non_blocking=True)
    if inputs.gate_slots is not None and step.gate_slots is not None:
        inputs.gate_slots.copy_(step.gate_slots, non_blocking=True)

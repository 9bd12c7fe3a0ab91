"""The engine's sizes and its counters, shared by its parts.

``EngineConfig`` bounds the scheduler (batch, queue, prefill budget) and the
rows (context length). ``EngineStats`` is one object that the engine's parts
update and ``/metrics`` reads; each field has exactly one writing thread, so
no counter loses an update: ``waiting`` is written under the scheduler's lock,
``running``, ``steps``, ``generated_tokens`` and ``prefilled_tokens`` by the
model thread, ``finished`` and ``failed`` by the output processor (which counts
a request before publishing its final event, so a caller that has seen every
request end also sees them all counted).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32
    max_queue: int = 256
    # Prompt tokens prefilled between two decode steps: bounds how long the
    # running requests wait while new ones join. A longer prompt is prefilled
    # this many tokens a step (chunked prefill).
    prefill_budget: int = 2048
    context_length: int = 2048
    # Replay decode steps from recorded CUDA graphs (on a CUDA device only;
    # the KV cache is then reserved whole, max_batch x context_length, at start).
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "prefill_budget", "context_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be at least 1")


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    steps: int = 0
    # Tokens the model sampled, including the few a row may still produce
    # between its stop sequence and the model thread retiring it.
    generated_tokens: int = 0
    prefilled_tokens: int = 0
    finished: int = 0
    failed: int = 0

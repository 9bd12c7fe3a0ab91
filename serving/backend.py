"""Where generation runs: in this process, or on Ray Serve replicas.

The API layer starts a request on a backend and reads its events; it does not
know whether the engine is a thread here or a replica on another machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from serving.engine.engine import Engine
from serving.engine.requests import Event, GenerationRequest, RequestHandle


class EventStream(Protocol):
    """One running request: its events (ending with Finished or Failed), and cancel."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def cancel(self) -> None: ...


class GenerationBackend(Protocol):
    def start(self, model_id: str, request: GenerationRequest) -> EventStream:
        """Submit a request; raises ``EngineOverloaded`` when it cannot be queued."""
        ...


class _LocalStream:
    def __init__(self, handle: RequestHandle) -> None:
        self._handle = handle

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._handle.events()

    def cancel(self) -> None:
        self._handle.cancel()


class LocalBackend:
    """The engines of this process (the embedded mode)."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self._engines = engines

    def start(self, model_id: str, request: GenerationRequest) -> EventStream:
        handle = self._engines[model_id].submit(request, loop=asyncio.get_running_loop())
        return _LocalStream(handle)

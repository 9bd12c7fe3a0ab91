"""A streamed body whose end runs exactly once, however the stream ends.

Starlette closes a response body it iterated, but not one it never started (the client
gone before the first byte), and an async generator's ``finally`` does not run until
it is started. A completion's stream holds the router's load ticket and the engine's
work, so its end must run in every case: ``ClosingStream.aclose`` runs the close
callback even if the body was never iterated, and ``OnceOnly`` makes a second call a
no-op.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable


class ClosingStream:
    """An async iterator over ``body`` whose ``aclose`` runs ``close`` even if never started."""

    def __init__(self, body: AsyncIterator[str], close: Callable[[], None]) -> None:
        self._body = body
        self._close = close

    def __aiter__(self) -> ClosingStream:
        return self

    async def __anext__(self) -> str:
        return await anext(self._body)

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._close()

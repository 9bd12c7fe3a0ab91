"""Applies the registry's invalidation events to a replica's local caches.

Pub/sub delivers at most once: while the connection to Redis is down, events
are lost. So on any delivery failure the listener tells its handlers to drop
everything (``None``), then subscribes again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from adapters.invalidation_event import INVALIDATION_CHANNEL, InvalidationEvent
from storage.cache import Cache
from storage.errors import StorageError

logger = logging.getLogger(__name__)

# Called with an event, or with None: "events may have been missed, drop all".
InvalidationHandler = Callable[[InvalidationEvent | None], None]


class InvalidationListener:
    def __init__(
        self, cache: Cache, handlers: Sequence[InvalidationHandler], *, retry_seconds: float = 1.0
    ) -> None:
        self._cache = cache
        self._handlers = tuple(handlers)
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, wait_seconds: float = 5.0) -> None:
        """Start listening; returns once subscribed, so no later event is missed."""
        self._thread = threading.Thread(target=self._run, name="adapter-invalidation", daemon=True)
        self._thread.start()
        self._subscribed.wait(wait_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _dispatch(self, event: InvalidationEvent | None) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                logger.exception("invalidation handler failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._cache.subscribe(INVALIDATION_CHANNEL) as subscription:
                    self._subscribed.set()
                    while not self._stop.is_set():
                        message = subscription.get(timeout=0.5)
                        if message is None:
                            continue
                        try:
                            event = InvalidationEvent.from_bytes(message)
                        except (ValueError, KeyError, TypeError):
                            logger.warning("ignoring a malformed invalidation event")
                            continue
                        self._dispatch(event)
            except StorageError as exc:
                logger.warning("invalidation events interrupted (%s); dropping local caches", exc)
                self._dispatch(None)
                self._stop.wait(self._retry_seconds)

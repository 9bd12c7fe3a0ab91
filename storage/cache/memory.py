"""The in-process cache: everything in this Python process, nothing shared.

Used when no Redis is configured (development, tests, a single-process
install). Rate limits are then per process, and invalidation events reach
only subscribers in this process.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from storage.cache.base import (
    Cache,
    Subscription,
    TokenBucketResult,
    check_bucket,
    check_ttl,
)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024

# Full buckets are equivalent to absent ones, so they are dropped; sweeping
# only when the table has doubled keeps the cost per call constant.
_MIN_BUCKET_SWEEP = 1024


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float | None


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float
    full_at: float


class InProcessCache(Cache):
    """A thread-safe cache in this process's memory.

    Values are evicted least recently used first once they total more than
    ``max_bytes``; a value larger than ``max_bytes`` is not kept at all.
    ``clock`` (seconds, monotonic) drives TTLs and token buckets; tests inject
    a fake one.
    """

    def __init__(
        self,
        prefix: str = "tailor:",
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes!r}")
        self._prefix = prefix
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._stored_bytes = 0
        self._buckets: dict[str, _Bucket] = {}
        self._bucket_sweep_at = _MIN_BUCKET_SWEEP
        # Weak, so that a subscription its owner forgot to close can still be
        # collected instead of queueing messages forever.
        self._subscribers: dict[str, weakref.WeakSet[_QueueSubscription]] = {}

    def get(self, key: str) -> bytes | None:
        name = self._prefix + key
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return None
            if entry.expires_at is not None and self._clock() >= entry.expires_at:
                self._remove(name)
                return None
            self._entries.move_to_end(name)
            return entry.value

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        check_ttl(ttl_seconds)
        name = self._prefix + key
        with self._lock:
            # The old value goes even when the new one is too big to keep:
            # serving it after a set would hand out stale weights.
            self._remove(name)
            if len(value) > self._max_bytes:
                return
            expires_at = None if ttl_seconds is None else self._clock() + ttl_seconds
            self._entries[name] = _Entry(value, expires_at)
            self._stored_bytes += len(value)
            self._evict()

    def delete(self, key: str) -> None:
        with self._lock:
            self._remove(self._prefix + key)

    def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> TokenBucketResult:
        check_bucket(capacity, refill_per_second, cost)
        name = self._prefix + key
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(name)
            tokens = capacity
            if bucket is not None:
                elapsed = max(0.0, now - bucket.updated_at)
                tokens = min(capacity, bucket.tokens + elapsed * refill_per_second)
            if tokens < cost:
                return TokenBucketResult(False, tokens, (cost - tokens) / refill_per_second)
            tokens -= cost
            full_at = now + (capacity - tokens) / refill_per_second
            self._buckets[name] = _Bucket(tokens, now, full_at)
            self._sweep_full_buckets(now)
            return TokenBucketResult(True, tokens, 0.0)

    def publish(self, channel: str, message: bytes) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(self._prefix + channel, ()))
        for subscription in subscribers:
            subscription.deliver(message)

    def subscribe(self, channel: str) -> Subscription:
        name = self._prefix + channel
        subscription = _QueueSubscription(lambda closed: self._unsubscribe(name, closed))
        with self._lock:
            self._subscribers.setdefault(name, weakref.WeakSet()).add(subscription)
        return subscription

    def ping(self) -> None:
        """Always fine: there is nothing to reach."""

    def close(self) -> None:
        with self._lock:
            subscriptions = [s for subs in self._subscribers.values() for s in subs]
        for subscription in subscriptions:
            subscription.close()

    def _remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._stored_bytes -= len(entry.value)

    def _evict(self) -> None:
        if self._stored_bytes <= self._max_bytes:
            return
        now = self._clock()
        expired = [
            name
            for name, entry in self._entries.items()
            if entry.expires_at is not None and now >= entry.expires_at
        ]
        for name in expired:
            self._remove(name)
        while self._stored_bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)

    def _sweep_full_buckets(self, now: float) -> None:
        if len(self._buckets) < self._bucket_sweep_at:
            return
        self._buckets = {name: b for name, b in self._buckets.items() if b.full_at > now}
        self._bucket_sweep_at = max(_MIN_BUCKET_SWEEP, 2 * len(self._buckets))

    def _unsubscribe(self, name: str, subscription: _QueueSubscription) -> None:
        with self._lock:
            subscribers = self._subscribers.get(name)
            if subscribers is None:
                return
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[name]


class _QueueSubscription(Subscription):
    def __init__(self, on_close: Callable[[_QueueSubscription], None]) -> None:
        # None in the queue is the wake-up call of close(), never a message.
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._on_close = on_close
        self._closed = False

    def deliver(self, message: bytes) -> None:
        if not self._closed:
            self._queue.put(message)

    def get(self, timeout: float) -> bytes | None:
        if self._closed:
            return None
        try:
            message = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        return None if self._closed else message

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        self._queue.put(None)

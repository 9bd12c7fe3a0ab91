"""What every cache offers: the ``Cache`` and ``Subscription`` protocols.

A cache holds three kinds of short-lived state:

* hot copies of adapter weights (bytes, optionally with a TTL), which may
  vanish at any time: callers always have the durable copy to fall back on;
* token buckets for per-user rate limits;
* publish/subscribe channels for invalidation events, e.g. "adapter X
  version 3 promoted", so that model replicas drop stale copies.

Every key and channel is stored under the cache's prefix, so that one Redis
can hold several installs (or test runs) side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self


@dataclass(frozen=True)
class TokenBucketResult:
    """The outcome of one ``Cache.take_tokens`` call.

    ``remaining`` is the tokens left after this call; ``retry_after_seconds``
    is 0 when allowed, else how long until the requested cost is available.
    """

    allowed: bool
    remaining: float
    retry_after_seconds: float


class Subscription(Protocol):
    """Messages published on one channel after ``Cache.subscribe`` returned.

    Meant for one consumer thread; ``close`` may be called from any thread and
    makes a pending ``get`` return ``None`` promptly.
    """

    def get(self, timeout: float) -> bytes | None:
        """The next message, or ``None`` once ``timeout`` seconds have passed
        (or the subscription is closed)."""
        ...

    def close(self) -> None:
        """Stop receiving; idempotent."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Cache(Protocol):
    """A shared, lossy store of bytes, token buckets and pub/sub channels.

    Safe to call from several threads at once.
    """

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or ``None`` (missing, expired or evicted)."""
        ...

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        """Store ``value``; without ``ttl_seconds`` it stays until deleted or evicted.

        Raises ``ValueError`` when ``ttl_seconds`` is given and not a finite
        number > 0.
        """
        ...

    def delete(self, key: str) -> None:
        """Forget ``key``; no error when it is missing."""
        ...

    def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> TokenBucketResult:
        """Atomically take ``cost`` tokens from the bucket ``key`` if it holds them.

        A bucket starts full (``capacity`` tokens) and refills continuously at
        ``refill_per_second``. When fewer than ``cost`` tokens are there,
        nothing is taken. Buckets live in their own namespace: ``key`` never
        clashes with a value stored by ``set``.

        Raises ``ValueError`` unless capacity, refill and cost are finite and
        > 0 and cost <= capacity.
        """
        ...

    def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every open subscription of ``channel``."""
        ...

    def subscribe(self, channel: str) -> Subscription:
        """Start receiving ``channel``; every message published after this returns
        is delivered to this subscription (and to every other one)."""
        ...

    def ping(self) -> None:
        """Check that the backend answers; raises ``BackendUnavailable`` if not."""
        ...

    def close(self) -> None:
        """Release connections and close every open subscription; idempotent."""
        ...


def check_ttl(ttl_seconds: float | None) -> None:
    """Raise ``ValueError`` unless ``ttl_seconds`` is None or a finite number > 0."""
    if ttl_seconds is not None and not _is_positive(ttl_seconds):
        raise ValueError(f"ttl_seconds must be a finite number > 0, got {ttl_seconds!r}")


def check_bucket(capacity: float, refill_per_second: float, cost: float) -> None:
    """Raise ``ValueError`` unless the token bucket arguments make sense."""
    for name, value in (
        ("capacity", capacity),
        ("refill_per_second", refill_per_second),
        ("cost", cost),
    ):
        if not _is_positive(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if cost > capacity:
        # Such a request could never be allowed; refusing it with a retry
        # time would make the caller wait forever.
        raise ValueError(f"cost {cost!r} exceeds the bucket capacity {capacity!r}")


def _is_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0

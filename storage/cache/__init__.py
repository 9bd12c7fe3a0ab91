"""The cache layer: hot copies of adapter weights, rate-limit token buckets and
invalidation events, in Redis (shared by every process) or in process.

Start with ``open_cache(settings.storage.redis_url, prefix=settings.storage.cache_prefix)``.
"""

from __future__ import annotations

from storage.cache.base import Cache, Subscription, TokenBucketResult
from storage.cache.memory import InProcessCache
from storage.cache.redis_cache import RedisCache

__all__ = [
    "Cache",
    "InProcessCache",
    "RedisCache",
    "Subscription",
    "TokenBucketResult",
    "open_cache",
]


def open_cache(redis_url: str | None, *, prefix: str) -> Cache:
    """A ``RedisCache`` for ``redis_url``; an ``InProcessCache`` when it is unset.

    An empty URL counts as unset, as an empty ``TAILOR_REDIS_URL`` would.
    Does not connect: call ``ping()`` to check that Redis answers.
    """
    if not redis_url:
        return InProcessCache(prefix)
    return RedisCache(redis_url, prefix=prefix)

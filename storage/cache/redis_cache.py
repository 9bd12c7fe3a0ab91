"""The Redis cache, shared by every API process and model replica of an install.

Token buckets run as one Lua script on Redis's own clock, so that processes
on hosts with drifting clocks still share one bucket exactly. Pub/sub is
Redis pub/sub: fire and forget, so a subscriber that loses its connection
misses what was published meanwhile (its ``get`` raises ``BackendUnavailable``,
and a replica should then treat every hot copy as stale).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.client import PubSub
from redis.retry import Retry

from storage.cache.base import (
    Cache,
    Subscription,
    TokenBucketResult,
    check_bucket,
    check_ttl,
)
from storage.errors import BackendUnavailable, ConfigurationError

SETTING = "TAILOR_REDIS_URL"

_SCHEMES = ("redis", "rediss", "unix")

# Token buckets get their own namespace so that a bucket and a value stored
# with set() under the same name never collide (WRONGTYPE in Redis).
_BUCKET_NAMESPACE = "bucket:"

# How often a waiting Subscription.get() lets a close() from another thread
# through; it does not delay messages, which wake the wait at once.
_CLOSE_LATENCY_SECONDS = 0.1

# KEYS[1]: the bucket; ARGV: capacity, refill per second, cost.
# Floats travel as strings: Redis turns a Lua number reply into an integer.
# The key expires when the bucket would be full again, which is the same as
# it being absent, so idle buckets cost no memory.
_TAKE_TOKENS_LUA = """
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = capacity
if state[1] and state[2] then
  local elapsed = math.max(0, now - tonumber(state[2]))
  tokens = math.min(capacity, tonumber(state[1]) + elapsed * refill)
end
if tokens < cost then
  return {0, string.format('%.17g', tokens), string.format('%.17g', (cost - tokens) / refill)}
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.17g', now))
local full_in_ms = math.min(math.ceil((capacity - tokens) / refill * 1000), 1e12)
redis.call('PEXPIRE', KEYS[1], string.format('%d', full_in_ms))
return {1, string.format('%.17g', tokens), '0'}
"""


class RedisCache(Cache):
    """A cache in the Redis at ``url``; constructing it does not connect.

    Connection failures and timeouts of any call surface as
    ``BackendUnavailable("TAILOR_REDIS_URL", ...)``.
    """

    def __init__(self, url: str, *, prefix: str = "tailor:", socket_timeout: float = 5.0) -> None:
        if not socket_timeout > 0:
            raise ValueError(f"socket_timeout must be > 0, got {socket_timeout!r}")
        self._secrets = _secrets_of(url)
        _check_url(url)
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # One retry absorbs a pooled connection that the server closed
                # while idle; redis-py's default of 10 retries would hold a
                # request for about a minute on a host that does not answer.
                retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
            )
        except ValueError as exc:
            raise ConfigurationError(
                SETTING, f"malformed Redis URL: {self._redact(str(exc))}"
            ) from None
        self._prefix = prefix
        self._socket_timeout = socket_timeout
        self._take_tokens_script = self._client.register_script(_TAKE_TOKENS_LUA)
        self._subscriptions_lock = threading.Lock()
        self._subscriptions: weakref.WeakSet[_RedisSubscription] = weakref.WeakSet()

    def get(self, key: str) -> bytes | None:
        with self._unavailable_on_connection_error():
            value = self._client.get(self._prefix + key)
        # The client is built without decode_responses, so values are bytes.
        assert value is None or isinstance(value, bytes)
        return value

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        check_ttl(ttl_seconds)
        # Rounded up: a TTL must never end sooner than asked, nor be 0 ms.
        ttl_ms = None if ttl_seconds is None else max(1, math.ceil(ttl_seconds * 1000))
        with self._unavailable_on_connection_error():
            self._client.set(self._prefix + key, value, px=ttl_ms)

    def delete(self, key: str) -> None:
        with self._unavailable_on_connection_error():
            self._client.delete(self._prefix + key)

    def take_tokens(
        self, key: str, *, capacity: float, refill_per_second: float, cost: float = 1.0
    ) -> TokenBucketResult:
        check_bucket(capacity, refill_per_second, cost)
        with self._unavailable_on_connection_error():
            reply = self._take_tokens_script(
                keys=[self._prefix + _BUCKET_NAMESPACE + key],
                args=[float(capacity), float(refill_per_second), float(cost)],
            )
        allowed, remaining, retry_after = reply
        return TokenBucketResult(int(allowed) == 1, float(remaining), float(retry_after))

    def publish(self, channel: str, message: bytes) -> None:
        with self._unavailable_on_connection_error():
            self._client.publish(self._prefix + channel, message)

    def subscribe(self, channel: str) -> Subscription:
        pubsub = self._client.pubsub()
        try:
            with self._unavailable_on_connection_error():
                pubsub.subscribe(self._prefix + channel)
                self._await_confirmation(pubsub)
        except BaseException:
            pubsub.close()
            raise
        subscription = _RedisSubscription(
            pubsub, self._unavailable_on_connection_error, self._forget
        )
        with self._subscriptions_lock:
            self._subscriptions.add(subscription)
        return subscription

    def ping(self) -> None:
        with self._unavailable_on_connection_error():
            self._client.ping()

    def close(self) -> None:
        with self._subscriptions_lock:
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()
        self._client.close()

    def _await_confirmation(self, pubsub: PubSub) -> None:
        # Until Redis confirms, a message published by someone else could
        # still be missed; callers rely on "subscribed means delivered".
        deadline = time.monotonic() + self._socket_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailable(SETTING, "Redis did not confirm a subscription in time")
            reply = pubsub.get_message(timeout=remaining)
            if reply is not None and reply["type"] in ("subscribe", b"subscribe"):
                return

    def _forget(self, subscription: _RedisSubscription) -> None:
        with self._subscriptions_lock:
            self._subscriptions.discard(subscription)

    @contextmanager
    def _unavailable_on_connection_error(self) -> Iterator[None]:
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            detail = self._redact(" ".join(str(exc).split())) or "no detail"
            raise BackendUnavailable(
                SETTING, f"cannot reach Redis ({type(exc).__name__}: {detail})"
            ) from exc

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _RedisSubscription(Subscription):
    def __init__(
        self,
        pubsub: PubSub,
        translate_errors: Callable[[], AbstractContextManager[None]],
        on_close: Callable[[_RedisSubscription], None],
    ) -> None:
        self._pubsub = pubsub
        self._translate_errors = translate_errors
        self._on_close = on_close
        # A PubSub is not thread-safe; the lock lets close() come from another
        # thread without pulling the connection out from under a get().
        self._lock = threading.Lock()
        self._closed = False

    def get(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                if self._closed:
                    return None
                wait = min(max(0.0, deadline - time.monotonic()), _CLOSE_LATENCY_SECONDS)
                with self._translate_errors():
                    reply = self._pubsub.get_message(timeout=wait)
            if reply is not None and reply["type"] in ("message", b"message"):
                data: bytes = reply["data"]
                return data
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Dropping the connection ends the subscription on the server too.
            self._pubsub.close()
        self._on_close(self)


def _check_url(url: str) -> None:
    """Catch what redis-py would accept silently or report with the URL's parts in it."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # parsing the port is the check
    except ValueError:
        raise ConfigurationError(SETTING, "malformed Redis URL (bad host or port)") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(SETTING, "must be a redis://, rediss:// or unix:// URL")
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigurationError(SETTING, "a unix:// Redis URL needs a socket path")
        return
    database = parts.path.strip("/")
    if "db" not in parse_qs(parts.query) and database and not database.isdigit():
        raise ConfigurationError(SETTING, "the path of a Redis URL must be a database number")


def _secrets_of(url: str) -> list[str]:
    """The password of ``url`` as written and as decoded, for scrubbing messages."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    if not password:
        return []
    return sorted({password, unquote(password)}, key=len, reverse=True)

"""The cache layer: the same behaviour from the in-process cache and from Redis.

The Redis half needs the server at TAILOR_TEST_REDIS_URL (default
redis://127.0.0.1:6379/0) and fails, never skips, when it cannot reach it;
deselect it explicitly with ``-m "not redis"``.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
import redis

from storage.cache import (
    Cache,
    InProcessCache,
    RedisCache,
    TokenBucketResult,
    open_cache,
)
from storage.errors import BackendUnavailable, ConfigurationError
from tests.clock import FakeClock

TEST_REDIS_URL = os.environ.get("TAILOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE_URL = "redis://:s3cret@127.0.0.1:1/0"

BINARY_VALUES = [b"", b"\x00", b"a\x00b\x00\x00", bytes(range(256)) * 64, "zé".encode()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_admin() -> Iterator[redis.Redis]:
    """A plain client on the test Redis, for checks and clean-up behind the cache's back."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        client.close()
        pytest.fail(
            f"the Redis tests need a Redis server at TAILOR_TEST_REDIS_URL "
            f"(default redis://127.0.0.1:6379/0), which cannot be reached ({exc}). "
            'Start one, or deselect these tests with -m "not redis".',
            pytrace=False,
        )
    yield client
    client.close()


class CacheFactory:
    """Opens caches of one kind under fresh prefixes and removes what they stored."""

    def __init__(self, kind: str, clock: FakeClock, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self._clock = clock
        self._admin: redis.Redis | None = (
            request.getfixturevalue("redis_admin") if kind == "redis" else None
        )
        self._cleanup = ExitStack()

    def open(self) -> Cache:
        prefix = f"tailor-test:{secrets.token_hex(6)}:"
        cache: Cache
        if self._admin is None:
            cache = InProcessCache(prefix, clock=self._clock)
        else:
            cache = RedisCache(TEST_REDIS_URL, prefix=prefix, socket_timeout=2.0)
            self._cleanup.callback(_delete_prefixed, self._admin, prefix)
        self._cleanup.callback(cache.close)
        return cache

    def close(self) -> None:
        self._cleanup.close()


def _delete_prefixed(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def cache_factory(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[CacheFactory]:
    factory = CacheFactory(request.param, clock, request)
    yield factory
    factory.close()


@pytest.fixture
def cache(cache_factory: CacheFactory) -> Cache:
    return cache_factory.open()


@pytest.fixture
def advance(cache_factory: CacheFactory, clock: FakeClock) -> Callable[[float], None]:
    """Let time pass for ``cache``: the fake clock in process, real time for Redis."""
    if cache_factory.kind == "memory":
        return clock.advance
    return time.sleep


# --- values ------------------------------------------------------------------


def test_binary_values_round_trip(cache: Cache) -> None:
    for index, value in enumerate(BINARY_VALUES):
        cache.set(f"value-{index}", value)
    for index, value in enumerate(BINARY_VALUES):
        assert cache.get(f"value-{index}") == value


def test_missing_key_is_none(cache: Cache) -> None:
    assert cache.get("never-set") is None


def test_set_overwrites_and_delete_forgets(cache: Cache) -> None:
    cache.set("k", b"one")
    cache.set("k", b"two")
    assert cache.get("k") == b"two"
    cache.delete("k")
    assert cache.get("k") is None
    cache.delete("k")


def test_value_expires_after_its_ttl(cache: Cache, advance: Callable[[float], None]) -> None:
    cache.set("short", b"v", ttl_seconds=0.2)
    cache.set("forever", b"v")
    advance(0.05)
    assert cache.get("short") == b"v"
    advance(0.25)
    assert cache.get("short") is None
    assert cache.get("forever") == b"v"


def test_set_without_ttl_clears_an_earlier_ttl(
    cache: Cache, advance: Callable[[float], None]
) -> None:
    cache.set("k", b"old", ttl_seconds=0.1)
    cache.set("k", b"new")
    advance(0.2)
    assert cache.get("k") == b"new"


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan, math.inf])
def test_invalid_ttl_is_refused_and_stores_nothing(cache: Cache, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        cache.set("k", b"v", ttl_seconds=ttl)
    assert cache.get("k") is None


# --- token buckets -----------------------------------------------------------


def test_bucket_allows_capacity_then_refuses(cache: Cache) -> None:
    results = [cache.take_tokens("user", capacity=3, refill_per_second=0.1) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results[:3]] == pytest.approx([2.0, 1.0, 0.0], abs=0.05)
    assert all(r.retry_after_seconds == 0.0 for r in results[:3])
    refused = results[3]
    assert 9.0 < refused.retry_after_seconds <= 10.0
    assert refused.remaining == pytest.approx(1.0 - refused.retry_after_seconds * 0.1, abs=1e-6)


def test_refused_take_takes_nothing(cache: Cache) -> None:
    first = cache.take_tokens("user", capacity=10, refill_per_second=0.001, cost=7)
    refused = cache.take_tokens("user", capacity=10, refill_per_second=0.001, cost=7)
    cheap = cache.take_tokens("user", capacity=10, refill_per_second=0.001, cost=3)
    assert (first.allowed, refused.allowed, cheap.allowed) == (True, False, True)
    assert refused.retry_after_seconds == pytest.approx(4 / 0.001, rel=0.01)


def test_bucket_refills_up_to_capacity(cache: Cache, advance: Callable[[float], None]) -> None:
    def take(cost: float = 1.0) -> TokenBucketResult:
        return cache.take_tokens("user", capacity=2, refill_per_second=10.0, cost=cost)

    assert take().allowed and take().allowed
    refused = take()
    assert not refused.allowed
    assert 0.0 < refused.retry_after_seconds <= 0.1
    advance(0.15)
    assert take().allowed
    # Half a second refills 5 tokens' worth, but the bucket holds only 2.
    advance(0.5)
    drained = take(cost=2)
    assert drained.allowed
    assert drained.remaining == pytest.approx(0.0, abs=0.5)


def test_buckets_are_per_key(cache: Cache) -> None:
    assert cache.take_tokens("alice", capacity=1, refill_per_second=0.001).allowed
    assert not cache.take_tokens("alice", capacity=1, refill_per_second=0.001).allowed
    assert cache.take_tokens("bob", capacity=1, refill_per_second=0.001).allowed


def test_bucket_does_not_clash_with_a_value_of_the_same_name(cache: Cache) -> None:
    cache.set("shared-name", b"value")
    assert cache.take_tokens("shared-name", capacity=1, refill_per_second=1.0).allowed
    assert cache.get("shared-name") == b"value"


def test_concurrent_takers_never_overspend(cache: Cache) -> None:
    capacity, threads, attempts = 20, 8, 10
    start = threading.Barrier(threads)
    allowed: list[bool] = []
    allowed_lock = threading.Lock()

    def taker() -> None:
        start.wait()
        mine = [
            cache.take_tokens("shared", capacity=capacity, refill_per_second=1e-6).allowed
            for _ in range(attempts)
        ]
        with allowed_lock:
            allowed.extend(mine)

    workers = [threading.Thread(target=taker) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=20)
    assert len(allowed) == threads * attempts
    assert allowed.count(True) == capacity


@pytest.mark.parametrize(
    ("capacity", "refill", "cost"),
    [
        (0.0, 1.0, 1.0),
        (-5.0, 1.0, 1.0),
        (5.0, 0.0, 1.0),
        (5.0, -1.0, 1.0),
        (5.0, 1.0, 0.0),
        (5.0, 1.0, -1.0),
        (5.0, 1.0, 6.0),
        (math.inf, 1.0, 1.0),
        (5.0, math.nan, 1.0),
    ],
)
def test_invalid_bucket_arguments_are_refused(
    cache: Cache, capacity: float, refill: float, cost: float
) -> None:
    with pytest.raises(ValueError):
        cache.take_tokens("user", capacity=capacity, refill_per_second=refill, cost=cost)


# --- pub/sub -----------------------------------------------------------------


def test_every_subscriber_gets_every_message(cache: Cache) -> None:
    with cache.subscribe("events") as first, cache.subscribe("events") as second:
        cache.publish("events", b"adapter 1 v3 promoted")
        assert first.get(timeout=2) == b"adapter 1 v3 promoted"
        assert second.get(timeout=2) == b"adapter 1 v3 promoted"


def test_messages_arrive_in_order_and_intact(cache: Cache) -> None:
    messages = [f"m{i}".encode() for i in range(30)] + BINARY_VALUES
    with cache.subscribe("events") as subscription:
        for message in messages:
            cache.publish("events", message)
        assert [subscription.get(timeout=2) for _ in messages] == messages


def test_get_times_out_with_none(cache: Cache) -> None:
    with cache.subscribe("quiet") as subscription:
        started = time.monotonic()
        assert subscription.get(timeout=0.2) is None
        assert 0.15 <= time.monotonic() - started < 2
        assert subscription.get(timeout=0) is None


def test_only_the_subscribed_channel_is_delivered(cache: Cache) -> None:
    with cache.subscribe("mine") as subscription:
        cache.publish("other", b"not for me")
        cache.publish("mine", b"for me")
        assert subscription.get(timeout=2) == b"for me"
        assert subscription.get(timeout=0.1) is None


def test_closed_subscription_gets_nothing_more(cache: Cache) -> None:
    closed = cache.subscribe("events")
    with cache.subscribe("events") as still_open:
        closed.close()
        closed.close()
        cache.publish("events", b"after close")
        assert still_open.get(timeout=2) == b"after close"
        assert closed.get(timeout=0.1) is None


def test_close_wakes_a_waiting_get(cache: Cache) -> None:
    subscription = cache.subscribe("events")
    results: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: results.append(subscription.get(timeout=120)))
    waiter.start()
    time.sleep(0.1)
    subscription.close()
    # Woken by the close, not by its own timeout: it ends long before that.
    waiter.join(timeout=60)
    assert not waiter.is_alive()
    assert results == [None]


def test_closing_the_cache_closes_its_subscriptions(cache: Cache) -> None:
    subscription = cache.subscribe("events")
    cache.close()
    assert subscription.get(timeout=0.1) is None
    cache.close()


# --- prefixes ----------------------------------------------------------------


def test_prefixes_isolate_keys_buckets_and_channels(cache_factory: CacheFactory) -> None:
    mine, theirs = cache_factory.open(), cache_factory.open()
    mine.set("k", b"mine")
    assert theirs.get("k") is None
    theirs.set("k", b"theirs")
    assert mine.get("k") == b"mine"

    assert mine.take_tokens("user", capacity=1, refill_per_second=0.001).allowed
    assert theirs.take_tokens("user", capacity=1, refill_per_second=0.001).allowed

    with mine.subscribe("events") as my_events, theirs.subscribe("events") as their_events:
        mine.publish("events", b"mine")
        assert my_events.get(timeout=2) == b"mine"
        assert their_events.get(timeout=0.1) is None


def test_ping_succeeds(cache: Cache) -> None:
    cache.ping()


# --- in-process only ---------------------------------------------------------


def test_in_process_ttl_in_real_time() -> None:
    # Without an injected clock the TTL runs on the real one: the value is gone
    # once the TTL has passed, and not before.
    ttl = 0.3
    cache = InProcessCache(f"t{secrets.token_hex(4)}:")
    set_at = time.monotonic()
    cache.set("k", b"v", ttl_seconds=ttl)
    assert cache.get("k") == b"v"
    while cache.get("k") is not None:
        assert time.monotonic() < set_at + ttl + 10, "the value never expired"
        time.sleep(0.01)
    assert time.monotonic() - set_at >= ttl


def test_in_process_evicts_least_recently_used() -> None:
    cache = InProcessCache(max_bytes=10)
    cache.set("a", b"aaaa")
    cache.set("b", b"bbbb")
    assert cache.get("a") == b"aaaa"
    cache.set("c", b"cccc")
    assert cache.get("b") is None
    assert cache.get("a") == b"aaaa"
    assert cache.get("c") == b"cccc"


def test_in_process_evicts_expired_values_before_live_ones(clock: FakeClock) -> None:
    cache = InProcessCache(max_bytes=10, clock=clock)
    cache.set("live", b"1111")
    cache.set("expiring", b"2222", ttl_seconds=1)
    clock.advance(2)
    cache.set("new", b"3333")
    assert cache.get("live") == b"1111"
    assert cache.get("new") == b"3333"


def test_in_process_drops_a_value_bigger_than_the_whole_cache() -> None:
    cache = InProcessCache(max_bytes=10)
    cache.set("k", b"small")
    cache.set("k", b"x" * 11)
    assert cache.get("k") is None
    cache.set("other", b"fits")
    assert cache.get("other") == b"fits"


def test_in_process_refuses_a_non_positive_size() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        InProcessCache(max_bytes=0)


# --- Redis only --------------------------------------------------------------


@pytest.mark.redis
def test_redis_bucket_key_expires_when_full_again(redis_admin: redis.Redis) -> None:
    prefix = f"tailor-test:{secrets.token_hex(6)}:"
    cache = RedisCache(TEST_REDIS_URL, prefix=prefix)
    try:
        cache.take_tokens("user", capacity=4, refill_per_second=2.0, cost=3)
        keys = list(redis_admin.scan_iter(match=f"{prefix}*"))
        assert len(keys) == 1
        assert 1000 < redis_admin.pttl(keys[0]) <= 1500
    finally:
        cache.close()
        _delete_prefixed(redis_admin, prefix)


@pytest.mark.redis
def test_redis_bucket_is_shared_between_clients(redis_admin: redis.Redis) -> None:
    prefix = f"tailor-test:{secrets.token_hex(6)}:"
    first = RedisCache(TEST_REDIS_URL, prefix=prefix)
    second = RedisCache(TEST_REDIS_URL, prefix=prefix)
    try:
        for client in (first, second):
            assert client.take_tokens("user", capacity=2, refill_per_second=0.001).allowed
        assert not first.take_tokens("user", capacity=2, refill_per_second=0.001).allowed
        assert not second.take_tokens("user", capacity=2, refill_per_second=0.001).allowed
    finally:
        first.close()
        second.close()
        _delete_prefixed(redis_admin, prefix)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.ping(), id="ping"),
        pytest.param(lambda c: c.get("k"), id="get"),
        pytest.param(lambda c: c.set("k", b"v", ttl_seconds=1), id="set"),
        pytest.param(lambda c: c.delete("k"), id="delete"),
        pytest.param(
            lambda c: c.take_tokens("k", capacity=1, refill_per_second=1), id="take_tokens"
        ),
        pytest.param(lambda c: c.publish("ch", b"m"), id="publish"),
        pytest.param(lambda c: c.subscribe("ch"), id="subscribe"),
    ],
)
def test_unreachable_redis_is_backend_unavailable(call: Callable[[Cache], object]) -> None:
    cache = RedisCache(UNREACHABLE_URL, socket_timeout=1.0)
    try:
        with pytest.raises(BackendUnavailable) as raised:
            call(cache)
    finally:
        cache.close()
    assert raised.value.setting == "TAILOR_REDIS_URL"
    assert "TAILOR_REDIS_URL" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "redis://:badport",
        "redis://:s3cret@host:s3cret",
        "redis://host:99999",
        "redis://host/not-a-number",
        "redis://host?db=nope",
        "redis://[::1",
        "unix://",
    ],
)
def test_malformed_redis_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisCache(url)
    assert raised.value.setting == "TAILOR_REDIS_URL"
    assert "s3cret" not in str(raised.value)


def test_open_cache_picks_the_backend_without_connecting() -> None:
    assert isinstance(open_cache(None, prefix="p:"), InProcessCache)
    assert isinstance(open_cache("", prefix="p:"), InProcessCache)
    redis_cache = open_cache(UNREACHABLE_URL, prefix="p:")
    assert isinstance(redis_cache, RedisCache)
    redis_cache.close()

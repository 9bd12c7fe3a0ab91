"""The last hour of this process's metrics, as points for the dashboard's live charts.

Prometheus keeps history for those who run it; the dashboard must work without
one. A thread reads the same registry ``GET /metrics`` serves every few
seconds and keeps the differences between readings: rates per minute,
latency percentiles of the interval, and the gauges as they were.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

KEPT_SECONDS = 3600.0
# "Requests" on the charts are generation requests, not every API call.
COMPLETION_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
logger = logging.getLogger(__name__)


@dataclass
class Reading:
    """Cumulative counters and current gauges at one instant."""

    t: float
    requests: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    # Upper bound -> cumulative count, summed over models.
    latency_buckets: dict[float, float] = field(default_factory=dict)
    routing: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    cache_hits: float = 0.0
    cache_lookups: float = 0.0
    queue_depth: float = 0.0
    running_requests: float = 0.0
    jobs: dict[str, float] = field(default_factory=dict)


def read_registry(registry: CollectorRegistry, *, now: float) -> Reading:
    reading = Reading(t=now)
    for metric in registry.collect():
        for sample in metric.samples:
            _add_sample(reading, sample.name, sample.labels, sample.value)
    return reading


def _add_sample(r: Reading, name: str, labels: dict[str, str], value: float) -> None:
    if name == "tailor_http_requests_total" and labels["route"] in COMPLETION_ROUTES:
        r.requests += value
    elif name == "tailor_tokens_total":
        if labels["kind"] == "prompt":
            r.prompt_tokens += value
        else:
            r.completion_tokens += value
    elif name == "tailor_completion_seconds_bucket":
        bound = float(labels["le"])
        r.latency_buckets[bound] = r.latency_buckets.get(bound, 0.0) + value
    elif name == "tailor_routing_decisions_total":
        r.routing[labels["model"]] = r.routing.get(labels["model"], 0.0) + value
    elif name == "tailor_cost_total":
        r.cost += value
    elif name == "tailor_adapter_cache_total":
        r.cache_lookups += value
        if labels["tier"] != "registry":
            r.cache_hits += value
    elif name == "tailor_queue_depth":
        r.queue_depth += value
    elif name == "tailor_running_requests":
        r.running_requests += value
    elif name == "tailor_finetune_jobs":
        r.jobs[labels["state"]] = value


def point_between(before: Reading, after: Reading) -> dict[str, Any]:
    """One chart point: what happened between two readings, per minute."""
    per_minute = 60.0 / max(after.t - before.t, 1e-9)

    def rate(now: float, then: float) -> float:
        return max(0.0, now - then) * per_minute

    latency = {
        bound: count - before.latency_buckets.get(bound, 0.0)
        for bound, count in after.latency_buckets.items()
    }
    lookups = after.cache_lookups - before.cache_lookups
    return {
        "t": after.t,
        "requests_per_minute": rate(after.requests, before.requests),
        "prompt_tokens_per_minute": rate(after.prompt_tokens, before.prompt_tokens),
        "completion_tokens_per_minute": rate(after.completion_tokens, before.completion_tokens),
        "tokens_per_minute": rate(
            after.prompt_tokens + after.completion_tokens,
            before.prompt_tokens + before.completion_tokens,
        ),
        "latency_p50_s": histogram_quantile(0.5, latency),
        "latency_p99_s": histogram_quantile(0.99, latency),
        "routing_per_minute": {
            model: rate(count, before.routing.get(model, 0.0))
            for model, count in after.routing.items()
        },
        "cost_per_minute": rate(after.cost, before.cost),
        "cost_total": after.cost,
        "cache_hit_rate": (after.cache_hits - before.cache_hits) / lookups if lookups > 0 else None,
        "queue_depth": int(after.queue_depth),
        "running_requests": int(after.running_requests),
        "jobs": {state: int(count) for state, count in after.jobs.items()},
    }


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's estimate: linear within the bucket the quantile falls in."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                # Above the highest finite bound: that bound is all we know.
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


class MetricsHistory:
    """Reads the registry every ``interval_seconds`` on its own thread."""

    def __init__(self, registry: CollectorRegistry, *, interval_seconds: float) -> None:
        self.registry = registry
        self.interval_seconds = interval_seconds
        self._points: deque[dict[str, Any]] = deque(
            maxlen=max(2, math.ceil(KEPT_SECONDS / interval_seconds))
        )
        self._last: Reading | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, now: float | None = None) -> None:
        reading = read_registry(self.registry, now=time.time() if now is None else now)
        with self._lock:
            if self._last is not None:
                self._points.append(point_between(self._last, reading))
            self._last = reading

    def points_since(self, since: float = 0.0) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self._points if p["t"] > since]

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metrics-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                # A reading that failed (the database away for a moment) is a gap
                # in the charts, not a dead sampler.
                logger.warning("metrics reading failed", exc_info=True)
            if self._stop.wait(self.interval_seconds):
                return

"""Prometheus metrics of one server process (``GET /metrics``).

Counters that the request path updates live here; figures that other parts
already count (engine queues, adapter caches, jobs by state) are read when
Prometheus scrapes, so they cost nothing per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from storage.errors import BackendUnavailable
from storage.tables import FineTuneJob, JobState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from serving.runtime import ModelRuntime
    from serving.services import Services

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StateCollector(Collector):
    def __init__(self, services: Services, runtime: ModelRuntime | None) -> None:
        self._services = services
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "tailor_queue_depth", "Requests waiting for a batch", labels=["model"]
        )
        running = GaugeMetricFamily(
            "tailor_running_requests", "Requests in the batch", labels=["model"]
        )
        cache = CounterMetricFamily(
            "tailor_adapter_cache",
            "Adapter lookups by the tier that answered",
            labels=["model", "tier"],
        )
        load_seconds = CounterMetricFamily(
            "tailor_adapter_load_seconds",
            "Time spent loading adapters from the registry",
            labels=["model"],
        )
        # Engines of this process only; Ray replicas report their own.
        models = self._runtime.local if self._runtime is not None else {}
        for model_id, hosted in models.items():
            stats = hosted.engine.stats
            waiting.add_metric([model_id], stats.waiting)
            running.add_metric([model_id], stats.running)
            slots = hosted.slots.stats
            cache.add_metric([model_id, "device_slot"], slots.slot_hits)
            cache.add_metric([model_id, "cpu"], slots.cpu_hits)
            cache.add_metric([model_id, "registry"], slots.loads)
            load_seconds.add_metric([model_id], slots.load_seconds)
        yield waiting
        yield running
        yield cache
        yield load_seconds

        weights = self._services.adapters.counters
        hot = CounterMetricFamily(
            "tailor_adapter_weights_reads", "Adapter weight reads by source", labels=["source"]
        )
        hot.add_metric(["shared_cache"], weights.hot_copy_hits)
        hot.add_metric(["blob_store"], weights.blob_reads)
        hot.add_metric(["damaged_copy_dropped"], weights.hot_copies_dropped)
        hot.add_metric(["cache_unavailable"], weights.cache_unavailable)
        yield hot

        jobs = GaugeMetricFamily(
            "tailor_finetune_jobs", "Fine-tune jobs by state", labels=["state"]
        )
        database_up = GaugeMetricFamily(
            "tailor_database_up", "1 when the last scrape could read the database, else 0"
        )
        try:
            with self._services.database.session() as session:
                rows = session.execute(
                    select(FineTuneJob.state, func.count()).group_by(FineTuneJob.state)
                )
                counts = {state: count for state, count in rows}
        except BackendUnavailable:
            # A scrape during an outage still returns every other series: they
            # are what an operator looks at then.
            database_up.add_metric([], 0)
        else:
            database_up.add_metric([], 1)
            for state in JobState:
                jobs.add_metric([state.value], counts.get(state, 0))
            yield jobs
        yield database_up
        yield from self._workers()

    def _workers(self) -> Iterator[Metric]:
        # Only where this process supervises worker processes (embedded mode):
        # elsewhere it knows nothing about them, and a zero would be a lie.
        supervisor = self._runtime.workers if self._runtime is not None else None
        if supervisor is None:
            return
        states = supervisor.states()
        workers = GaugeMetricFamily(
            "tailor_finetune_workers",
            "Fine-tune worker processes of this server, alive or dead (waiting to restart)",
            labels=["state"],
        )
        workers.add_metric(["alive"], sum(state.alive for state in states))
        workers.add_metric(["dead"], sum(not state.alive for state in states))
        yield workers
        restarts = CounterMetricFamily(
            "tailor_finetune_worker_restarts",
            "Restarts of each fine-tune worker process after it died",
            labels=["worker"],
        )
        for state in states:
            restarts.add_metric([state.name], state.restarts)
        yield restarts


class Metrics:
    def __init__(self, services: Services, runtime: ModelRuntime | None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tailor_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "tailor_http_request_seconds",
            "HTTP request latency, until the response starts",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "tailor_tokens", "Tokens processed", ["model", "kind"], registry=self.registry
        )
        self.first_token_seconds = Histogram(
            "tailor_time_to_first_token_seconds",
            "From request to the first generated text",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.completion_seconds = Histogram(
            "tailor_completion_seconds",
            "From request to the end of generation",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.routing_decisions = Counter(
            "tailor_routing_decisions",
            "Routing decisions by chosen model and reason",
            ["model", "reason"],
            registry=self.registry,
        )
        self.routing_seconds = Histogram(
            "tailor_routing_decision_seconds",
            "Time to choose the base model, query embedding included",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.cost = Counter(
            "tailor_cost", "Relative cost of the tokens served", ["model"], registry=self.registry
        )
        self.registry.register(_StateCollector(services, runtime))

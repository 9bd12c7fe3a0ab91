"""What the dashboard's pages read: chart points, user detail, admin-queued jobs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from serving.metrics import LATENCY_BUCKETS, Metrics
from serving.metrics_history import MetricsHistory, histogram_quantile
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, math.inf: 40.0}
    # The median (rank 20) is halfway through the (0.1, 0.5] bucket.
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    # Everything above the top bound: that bound is the estimate.
    assert histogram_quantile(0.5, {1.0: 0.0, math.inf: 5.0}) == 1.0


def test_history_turns_counter_readings_into_rates_per_minute() -> None:
    registry = CollectorRegistry()
    requests = Counter("tailor_http_requests", "", ["method", "route", "status"], registry=registry)
    tokens = Counter("tailor_tokens", "", ["model", "kind"], registry=registry)
    decisions = Counter("tailor_routing_decisions", "", ["model", "reason"], registry=registry)
    latency = Histogram(
        "tailor_completion_seconds", "", ["model"], buckets=LATENCY_BUCKETS, registry=registry
    )
    history = MetricsHistory(registry, interval_seconds=10)

    history.sample(now=1000.0)
    assert history.points_since(0) == []  # one reading is no interval yet
    for _ in range(5):
        requests.labels("POST", "/v1/chat/completions", "200").inc()
        latency.labels("m").observe(0.3)
    # Neither admin traffic nor other API calls are generation requests.
    requests.labels("GET", "/admin/users", "200").inc(7)
    requests.labels("POST", "/v1/examples", "201").inc(3)
    requests.labels("POST", "/v1/completions", "200").inc(1)
    tokens.labels("m", "prompt").inc(100)
    tokens.labels("m", "completion").inc(50)
    decisions.labels("m", "score").inc(4)
    decisions.labels("n", "cost").inc(1)
    history.sample(now=1010.0)

    [point] = history.points_since(0)
    assert point["t"] == 1010.0
    assert point["requests_per_minute"] == pytest.approx(36.0)
    assert point["tokens_per_minute"] == pytest.approx(900.0)
    assert point["prompt_tokens_per_minute"] == pytest.approx(600.0)
    assert point["routing_per_minute"] == {"m": pytest.approx(24.0), "n": pytest.approx(6.0)}
    assert 0.25 < point["latency_p50_s"] <= 0.5
    assert point["cache_hit_rate"] is None  # no lookups in the interval

    history.sample(now=1020.0)
    quiet = history.points_since(1010.0)
    assert len(quiet) == 1
    assert quiet[0]["requests_per_minute"] == 0.0
    assert quiet[0]["latency_p50_s"] is None


def test_history_keeps_one_hour() -> None:
    history = MetricsHistory(CollectorRegistry(), interval_seconds=600)
    for i in range(10):
        history.sample(now=600.0 * i)
    assert [p["t"] for p in history.points_since(0)] == [600.0 * i for i in range(4, 10)]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_overview_serves_the_sampler_points_with_jobs_by_state(
    deployment: str, tmp_path: Path
) -> None:
    with app_client(deployment, tmp_path, real_models=False) as client:
        app = client.app
        metrics: Metrics = app.state.metrics  # type: ignore[attr-defined]
        history: MetricsHistory = app.state.metrics_history  # type: ignore[attr-defined]
        # The app's own sampler reads at real times, and one landing between the
        # two readings below would become the interval's start.
        history.stop()
        history.sample(now=1.0)
        metrics.cost.labels("m").inc(0.25)
        history.sample(now=61.0)
        body = client.get("/admin/overview", headers=ADMIN).json()
        assert body["bucket_seconds"] == 10
        point = next(p for p in body["points"] if p["t"] == 61.0)
        assert point["cost_per_minute"] == pytest.approx(0.25)
        assert point["cost_total"] == pytest.approx(0.25)
        assert set(point["jobs"]) == {"queued", "running", "succeeded", "failed", "cancelled"}
        later = client.get("/admin/overview", params={"since": 61.0}, headers=ADMIN).json()
        assert all(p["t"] > 61.0 for p in later["points"])


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_admin_queues_a_users_specialist_and_sees_their_counts(
    deployment: str, tmp_path: Path
) -> None:
    with app_client(deployment, tmp_path) as client:
        model = client.get("/admin/models", headers=ADMIN).json()["data"][0]["id"]
        user = client.post("/admin/users", json={"name": "cleo"}, headers=ADMIN).json()
        examples = [
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "ho"},
                ]
            }
        ] * 10
        added = client.post(
            "/v1/examples", json={"examples": examples}, headers=bearer(user["api_key"])
        )
        assert added.status_code in (200, 201), added.text

        detail = client.get(f"/admin/users/{user['id']}", headers=ADMIN).json()
        assert detail["example_count"] == 10
        assert detail["feedback_count"] == 0
        assert detail["routing"] == {
            "cost_weight": None,
            "max_price": None,
            "latency_slo_seconds": None,
        }

        job = client.post(
            "/admin/jobs",
            json={"model": model, "user_id": user["id"], "hyperparameters": {"epochs": 1}},
            headers=ADMIN,
        )
        assert job.status_code == 201, job.text
        assert job.json()["kind"] == "specialist"
        assert job.json()["user_id"] == user["id"]
        assert job.json()["trigger"] == "admin"
        # The user sees the job the admin queued for them.
        theirs = client.get("/v1/fine-tunes", headers=bearer(user["api_key"])).json()["data"]
        assert [j["id"] for j in theirs] == [job.json()["id"]]

        missing = client.post(
            "/admin/jobs", json={"model": model, "user_id": "usr_missing"}, headers=ADMIN
        )
        assert missing.status_code == 404
        # The admin and the user routes share one check of the model and the rank.
        too_big = {"model": model, "hyperparameters": {"rank": 256}}
        for path, headers in (("/admin/jobs", ADMIN), ("/v1/fine-tunes", bearer(user["api_key"]))):
            refused = client.post(path, json=too_big, headers=headers)
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "invalid_hyperparameters"
            unknown = client.post(path, json={"model": "no-such-model"}, headers=headers)
            assert unknown.json()["error"]["code"] == "model_not_found"
        generalist = client.post("/admin/jobs", json={"model": model}, headers=ADMIN).json()
        assert generalist["kind"] == "generalist" and generalist["user_id"] is None
        assert len(client.get("/admin/jobs", headers=ADMIN).json()["data"]) == 2

        models = client.get("/admin/models", headers=ADMIN).json()["data"]
        assert "auto" not in {m["id"] for m in models}
        assert client.get("/admin/models", headers=bearer(user["api_key"])).status_code == 403

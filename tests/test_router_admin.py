"""Admin controls of the router: resetting a user's influence, and live calibration.

The HTTP tests run on both deployments (SQLite + in-process cache, PostgreSQL +
Redis); the reliability maths is tested on its own.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from router.calibration import reliability_bins
from storage.clock import utc_now
from storage.database import Database
from storage.repositories import (
    BaseModelRepository,
    FeedbackRepository,
    UserRepository,
)
from storage.tables import Response
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer
from tests.logged_responses import log_response

SMALL, LARGE = "small-1m", "large-4m"


@dataclass(frozen=True)
class Setup:
    client: TestClient
    database: Database
    data_dir: Path


@pytest.fixture(params=DEPLOYMENTS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    with app_client(request.param, tmp_path, real_models=False) as client:
        database: Database = client.app.state.services.database  # type: ignore[attr-defined]
        with database.session() as session:
            for model, params in ((SMALL, 1_000_000), (LARGE, 4_000_000)):
                BaseModelRepository(session).upsert(
                    model_id=model,
                    architecture="llama",
                    path=model,
                    sha256="0" * 64,
                    source="test",
                    source_sha256="0" * 64,
                    dtype="float16",
                    size_bytes=2 * params,
                    parameter_count=params,
                    context_length=2048,
                    chat_template="{{ messages }}",
                    cost_per_million_tokens=params / 1e9,
                )
        yield Setup(client, database, tmp_path)


def new_user(client: TestClient, name: str) -> tuple[str, str]:
    """(user id, user key), made through the admin API."""
    created = client.post("/admin/users", json={"name": name}, headers=ADMIN)
    assert created.status_code == 201, created.text
    body = created.json()
    return body["id"], body["api_key"]


def respond(
    database: Database,
    user_id: str,
    model: str,
    *,
    prompt: str = "hi",
    quality: dict[str, float] | None = None,
) -> str:
    """A stored response; ``quality`` (per model) logs a learning router's decision,
    None a forced route that predicted nothing."""
    response_id = f"chatcmpl-{secrets.token_hex(8)}"
    decision: dict[str, Any] = {"model": model, "reason": "forced"}
    if quality is not None:
        decision = {
            "model": model,
            "reason": "score",
            "candidates": {m: {"quality": q, "utility": q} for m, q in quality.items()},
            "neighbours": {"count": 0, "similarities": []},
        }
    return log_response(
        database, user_id, model, prompt, response_id=response_id, routing_decision=decision
    )


def rate(client: TestClient, key: str, response_id: str, rating: int) -> int:
    sent = client.post(
        "/v1/feedback", json={"response_id": response_id, "rating": rating}, headers=bearer(key)
    )
    assert sent.status_code == 201, sent.text
    feedback_id: int = sent.json()["id"]
    return feedback_id


def prefer(client: TestClient, key: str, winner: str, loser: str) -> int:
    sent = client.post(
        "/v1/feedback",
        json={"response_id": winner, "preferred_over": loser},
        headers=bearer(key),
    )
    assert sent.status_code == 201, sent.text
    feedback_id: int = sent.json()["id"]
    return feedback_id


def routed_feedback_ids(database: Database) -> list[int]:
    with database.session() as session:
        return [f.feedback_id for f in FeedbackRepository(session).for_routing_after(after_id=0)]


# ---------------------------------------------------------------------------
# Resetting a user's influence


def test_a_reset_hides_the_users_earlier_feedback_from_the_router_only(setup: Setup) -> None:
    client, database = setup.client, setup.database
    ada, ada_key = new_user(client, "ada")
    bob, bob_key = new_user(client, "bob")
    ada_before = [
        rate(client, ada_key, respond(database, ada, SMALL), 1),
        prefer(
            client,
            ada_key,
            respond(database, ada, LARGE, prompt="q"),
            respond(database, ada, SMALL, prompt="q"),
        ),
    ]
    bob_before = rate(client, bob_key, respond(database, bob, LARGE), -1)
    assert routed_feedback_ids(database) == [*ada_before, bob_before]

    reset = client.post(f"/admin/users/{ada}/routing/reset", headers=ADMIN)
    assert reset.status_code == 200, reset.text
    body = reset.json()
    assert set(body) == {"user_id", "ignored_feedback_up_to", "reset_at"}
    assert body["user_id"] == ada
    assert body["ignored_feedback_up_to"] == bob_before  # the newest feedback of anyone
    reset_at = datetime.fromisoformat(body["reset_at"])
    assert abs((utc_now() - reset_at).total_seconds()) < 60

    # Only the router forgets: ada's feedback is still stored and counted.
    assert routed_feedback_ids(database) == [bob_before]
    with database.session() as session:
        assert FeedbackRepository(session).count(user_id=ada) == 2
        user = UserRepository(session).get(user_id=ada)
        assert user.route_reset_feedback_id == bob_before
        assert UserRepository(session).last_routing_reset() == reset_at

    # What ada says after the reset counts again.
    ada_after = rate(client, ada_key, respond(database, ada, SMALL), 0)
    assert routed_feedback_ids(database) == [bob_before, ada_after]
    with database.session() as session:
        resumed = FeedbackRepository(session).for_routing_after(after_id=bob_before)
        assert [(f.feedback_id, f.user_id, f.model) for f in resumed] == [(ada_after, ada, SMALL)]


def test_a_second_reset_moves_the_marker_on(setup: Setup) -> None:
    client, database = setup.client, setup.database
    ada, ada_key = new_user(client, "ada")
    first = client.post(f"/admin/users/{ada}/routing/reset", headers=ADMIN).json()
    assert first["ignored_feedback_up_to"] == 0  # no feedback at all yet

    later = rate(client, ada_key, respond(database, ada, SMALL), 1)
    assert routed_feedback_ids(database) == [later]
    second = client.post(f"/admin/users/{ada}/routing/reset", headers=ADMIN).json()
    assert second["ignored_feedback_up_to"] == later
    assert datetime.fromisoformat(second["reset_at"]) >= datetime.fromisoformat(first["reset_at"])
    assert routed_feedback_ids(database) == []
    with database.session() as session:
        assert UserRepository(session).last_routing_reset() == datetime.fromisoformat(
            second["reset_at"]
        )


def test_resetting_an_unknown_user_is_404_and_users_cannot_reset(setup: Setup) -> None:
    client = setup.client
    with setup.database.session() as session:
        assert UserRepository(session).last_routing_reset() is None
    missing = client.post("/admin/users/usr_nobody/routing/reset", headers=ADMIN)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    ada, ada_key = new_user(client, "ada")
    refused = client.post(f"/admin/users/{ada}/routing/reset", headers=bearer(ada_key))
    assert refused.status_code == 403
    with setup.database.session() as session:
        assert UserRepository(session).get(user_id=ada).route_reset_at is None
        assert UserRepository(session).last_routing_reset() is None


# ---------------------------------------------------------------------------
# Live calibration


def test_calibration_compares_the_served_models_quality_with_feedback(setup: Setup) -> None:
    client, database = setup.client, setup.database
    ada, ada_key = new_user(client, "ada")
    # Ratings: +1 -> 1, 0 -> 0.5, -1 -> 0, each against the served model's quality.
    rate(client, ada_key, respond(database, ada, SMALL, quality={SMALL: 0.15, LARGE: 0.9}), 1)
    rate(client, ada_key, respond(database, ada, LARGE, quality={SMALL: 0.2, LARGE: 0.85}), 0)
    rate(client, ada_key, respond(database, ada, LARGE, quality={SMALL: 0.3, LARGE: 0.95}), -1)
    # A preference: the winner observed 1, the loser 0, each with its own decision.
    winner = respond(database, ada, LARGE, prompt="q", quality={SMALL: 0.4, LARGE: 0.7})
    loser = respond(database, ada, SMALL, prompt="q", quality={SMALL: 0.45, LARGE: 0.6})
    prefer(client, ada_key, winner, loser)
    # Left out: a forced route with no prediction; a response without feedback;
    # feedback on a response from before the window.
    rate(client, ada_key, respond(database, ada, SMALL), 1)
    respond(database, ada, SMALL, quality={SMALL: 0.5})
    old = respond(database, ada, SMALL, quality={SMALL: 0.05})
    with database.session() as session:
        response = session.get(Response, old)
        assert response is not None
        response.created_at = utc_now() - timedelta(hours=48)
    rate(client, ada_key, old, 1)

    got = client.get("/admin/router/calibration?window_hours=24", headers=ADMIN)
    assert got.status_code == 200, got.text
    body = got.json()
    predicted = [0.15, 0.85, 0.95, 0.7, 0.45]
    observed = [1.0, 0.5, 0.0, 1.0, 0.0]
    expected = reliability_bins(predicted, observed)
    assert body["window_hours"] == 24
    assert body["count"] == 5
    assert body["brier"] == pytest.approx(expected["brier"])
    assert body["ece"] == pytest.approx(expected["ece"])
    assert len(body["bins"]) == 10
    by_lower = {round(b["lower"], 1): b for b in body["bins"]}
    assert by_lower[0.1] == pytest.approx(
        {"lower": 0.1, "upper": 0.2, "count": 1, "mean_predicted": 0.15, "observed_rate": 1.0}
    )
    assert by_lower[0.9]["count"] == 1 and by_lower[0.9]["observed_rate"] == 0.0
    assert by_lower[0.0] == {
        "lower": 0.0,
        "upper": pytest.approx(0.1),
        "count": 0,
        "mean_predicted": None,
        "observed_rate": None,
    }
    assert body["offline"] is None

    # A wider window takes the older response in too.
    wide = client.get("/admin/router/calibration?window_hours=72", headers=ADMIN).json()
    assert wide["count"] == 6
    assert wide["bins"][0]["count"] == 1 and wide["bins"][0]["observed_rate"] == 1.0


def test_calibration_shows_the_offline_figures_when_the_benchmark_wrote_them(
    setup: Setup,
) -> None:
    client = setup.client
    empty = client.get("/admin/router/calibration", headers=ADMIN).json()
    assert empty["count"] == 0 and empty["brier"] is None and empty["ece"] is None
    assert [b["count"] for b in empty["bins"]] == [0] * 10

    path = setup.data_dir / "router" / "calibration-offline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    offline = {"source": "dcrouter test", **reliability_bins([0.2, 0.8, 0.9], [0.0, 1.0, 1.0])}
    path.write_text(json.dumps(offline))
    shown = client.get("/admin/router/calibration", headers=ADMIN).json()["offline"]
    assert shown["source"] == "dcrouter test"
    assert shown["count"] == 3 and shown["bins"][8]["count"] == 1
    assert shown["brier"] == pytest.approx(offline["brier"])

    path.write_text("{not json")  # a half-written file is not shown
    assert client.get("/admin/router/calibration", headers=ADMIN).json()["offline"] is None


def test_calibration_is_for_admins_and_checks_the_window(setup: Setup) -> None:
    client = setup.client
    _, key = new_user(client, "ada")
    assert client.get("/admin/router/calibration", headers=bearer(key)).status_code == 403
    assert client.get("/admin/router/calibration").status_code == 401
    for bad in ("0", "-1", "100000", "soon"):
        got = client.get(f"/admin/router/calibration?window_hours={bad}", headers=ADMIN)
        assert got.status_code == 422, bad


# ---------------------------------------------------------------------------
# The reliability maths


def test_perfectly_calibrated_predictions_have_no_calibration_error() -> None:
    rng = np.random.default_rng(7)
    predicted = rng.uniform(0.0, 1.0, 200_000)
    observed = (rng.uniform(0.0, 1.0, predicted.size) < predicted).astype(float)
    result = reliability_bins(predicted, observed)
    assert result["count"] == predicted.size
    assert result["ece"] is not None and result["ece"] < 0.01
    for b in result["bins"]:
        assert b["observed_rate"] == pytest.approx(b["mean_predicted"], abs=0.02)
    # Brier of a calibrated uniform forecast: E[p(1 - p)] = 1/6.
    assert result["brier"] == pytest.approx(1 / 6, abs=0.005)


def test_overconfident_predictions_show_their_gap() -> None:
    # Says 0.95 where the answer is good half the time.
    result = reliability_bins([0.95] * 4, [1.0, 0.0, 1.0, 0.0], bins=10)
    assert result["ece"] == pytest.approx(0.45)
    assert result["brier"] == pytest.approx((0.05**2 + 0.95**2) / 2)
    last = result["bins"][-1]
    assert last["count"] == 4 and last["observed_rate"] == 0.5


def test_bins_cover_zero_to_one_and_empty_bins_have_no_means() -> None:
    result = reliability_bins([0.0, 0.25, 1.0], [0.0, 0.5, 1.0], bins=4)
    assert [(b["lower"], b["upper"]) for b in result["bins"]] == [
        (0.0, 0.25),
        (0.25, 0.5),
        (0.5, 0.75),
        (0.75, 1.0),
    ]
    # 0.25 opens the second bin; 1.0 falls in the last, closed one.
    assert [b["count"] for b in result["bins"]] == [1, 1, 0, 1]
    assert result["bins"][2]["mean_predicted"] is None
    assert result["bins"][2]["observed_rate"] is None
    assert result["ece"] == pytest.approx((0.0 + 0.25 + 0.0) / 3)


def test_no_observations_give_empty_bins_and_no_scores() -> None:
    result = reliability_bins([], [])
    assert result["count"] == 0 and result["brier"] is None and result["ece"] is None
    assert len(result["bins"]) == 10 and all(b["count"] == 0 for b in result["bins"])


@pytest.mark.parametrize(
    ("predicted", "observed", "bins"),
    [
        ([0.5, 0.5], [1.0], 10),  # different lengths
        ([1.5], [1.0], 10),  # not a probability
        ([-0.1], [0.0], 10),
        ([float("nan")], [1.0], 10),
        ([0.5], [float("inf")], 10),
        ([0.5], [2.0], 10),
        ([[0.5]], [[1.0]], 10),  # not flat
        ([0.5], [1.0], 0),  # no bins
        ([0.5], [1.0], 2.5),
    ],
)
def test_bad_input_is_refused(predicted: Any, observed: Any, bins: Any) -> None:
    with pytest.raises(ValueError):
        reliability_bins(predicted, observed, bins=bins)

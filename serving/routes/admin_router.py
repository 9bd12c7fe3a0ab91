"""Admin: the router's state (ratings, mix, cost, decision latency), its calibration
against real feedback, and users' routing preferences and resets.

The calibration is read from SQL (responses and feedback), so it covers every
process; the offline figures come from a file the benchmark writes, and are
shown as they are.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from router.calibration import reliability_bins
from serving.deps import AdminDep, OptionalRuntimeDep, SessionDep, SettingsDep
from serving.routing_schemas import (
    CalibrationPublic,
    NoRouterConfigPublic,
    OfflineCalibrationPublic,
    RouterStatePublic,
    RoutingPreferencesPublic,
    RoutingPreferencesUpdate,
    RoutingResetPublic,
)
from storage.clock import utc_now
from storage.repositories import BaseModelRepository, ResponseRepository, UserRepository
from storage.tables import Feedback, Response

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"])

WindowHours = Annotated[float, Query(gt=0, le=24 * 90)]

# The newest pieces of feedback one calibration reads at most: enough for
# stable bins, and a bound on the work of one dashboard refresh.
MAX_CALIBRATION_FEEDBACK = 20_000
CALIBRATION_BINS = 10
# Where the offline benchmark leaves its reliability figures, under the data dir.
OFFLINE_CALIBRATION_FILE = Path("router") / "calibration-offline.json"


@router.get("/router")
def router_state(
    _admin: AdminDep,
    session: SessionDep,
    runtime: OptionalRuntimeDep,
    window_hours: WindowHours = 24.0,
) -> RouterStatePublic:
    prices = {m.id: m.cost_per_million_tokens for m in BaseModelRepository(session).list_all()}
    rows = ResponseRepository(session).mix_since(since=utc_now() - timedelta(hours=window_hours))
    mix: dict[str, Any] = {
        "window_hours": window_hours,
        "models": {
            model: {
                "responses": responses,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cost": (prompt + completion) / 1e6 * prices.get(model, 0.0),
            }
            for model, responses, prompt, completion in rows
        },
    }
    learning = runtime.learning_router if runtime is not None else None
    if learning is None:
        name = "none" if runtime is None else type(runtime.router).__name__
        return RouterStatePublic(router=name, config=NoRouterConfigPublic(), mix=mix)
    return RouterStatePublic.model_validate({"router": "eagle", "mix": mix, **learning.state()})


@router.get("/router/calibration")
def router_calibration(
    _admin: AdminDep,
    session: SessionDep,
    settings: SettingsDep,
    window_hours: WindowHours = 24.0,
) -> CalibrationPublic:
    predicted, observed = _calibration_observations(
        session, since=utc_now() - timedelta(hours=window_hours)
    )
    live = reliability_bins(predicted, observed, bins=CALIBRATION_BINS)
    return CalibrationPublic.model_validate(
        {
            "window_hours": window_hours,
            **live,
            "offline": _offline_calibration(settings.storage.data_dir / OFFLINE_CALIBRATION_FILE),
        }
    )


def _calibration_observations(
    session: Session, *, since: datetime
) -> tuple[list[float], list[float]]:
    """(predicted, observed) pairs from feedback on responses created since ``since``.

    Predicted: the served model's ``quality`` in the logged decision. Observed:
    a rating of +1 / 0 / -1 is 1 / 0.5 / 0; a preference is 1 for the preferred
    response and 0 for the other. A response whose decision has no quality for
    its model (forced routes logged before the learning router) is skipped.
    """
    rated = aliased(Response)
    other = aliased(Response)
    # Only the candidates object of each decision leaves the database, not the
    # neighbours and the rest of it.
    query = (
        select(
            Feedback.rating,
            rated.base_model_id,
            rated.routing_decision["candidates"],
            rated.created_at,
            other.base_model_id,
            other.routing_decision["candidates"],
            other.created_at,
        )
        .join(rated, rated.id == Feedback.response_id)
        .outerjoin(other, other.id == Feedback.preferred_over_id)
        .where(or_(rated.created_at >= since, other.created_at >= since))
        .order_by(Feedback.id.desc())
        .limit(MAX_CALIBRATION_FEEDBACK)
    )
    predicted: list[float] = []
    observed: list[float] = []

    def add(model: str, candidates: Any, created_at: datetime, outcome: float) -> None:
        quality = _served_quality(candidates, model)
        if quality is not None and created_at >= since:
            predicted.append(quality)
            observed.append(outcome)

    for row in session.execute(query):
        rating, model, candidates, created, loser, loser_candidates, loser_created = row
        if loser is None:
            add(model, candidates, created, (rating + 1) / 2)
        else:  # a preference: this response won, the other lost
            add(model, candidates, created, 1.0)
            add(loser, loser_candidates, loser_created, 0.0)
    return predicted, observed


def _served_quality(candidates: Any, model: str) -> float | None:
    """The logged probability that ``model``'s answer is good, if it is one."""
    entry = candidates.get(model) if isinstance(candidates, dict) else None
    quality = entry.get("quality") if isinstance(entry, dict) else None
    if isinstance(quality, bool) or not isinstance(quality, int | float):
        return None
    return float(quality) if math.isfinite(quality) and 0.0 <= quality <= 1.0 else None


def _offline_calibration(path: Path) -> OfflineCalibrationPublic | None:
    """The benchmark's figures, or None when it has not written them (or wrote nonsense)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        logger.warning("cannot read the offline calibration %s: %s", path, error)
        return None
    try:
        return OfflineCalibrationPublic.model_validate_json(text)
    except ValidationError as error:
        logger.warning("ignoring the offline calibration %s: %s", path, error)
        return None


@router.patch("/users/{user_id}/routing")
def update_user_preferences(
    user_id: str, body: RoutingPreferencesUpdate, _admin: AdminDep, session: SessionDep
) -> RoutingPreferencesPublic:
    updated = UserRepository(session).set_routing_preferences(
        user_id=user_id, changes=body.changes()
    )
    session.commit()
    return RoutingPreferencesPublic.of(updated)


@router.post("/users/{user_id}/routing/reset")
def reset_user_routing(
    user_id: str, _admin: AdminDep, session: SessionDep, runtime: OptionalRuntimeDep
) -> RoutingResetPublic:
    user = UserRepository(session).reset_routing_influence(user_id=user_id)
    reset = RoutingResetPublic.of(user)
    session.commit()
    if runtime is not None:
        # This process forgets the user's past feedback before the answer goes back.
        runtime.sync_router()
    return reset

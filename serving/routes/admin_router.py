"""Admin: the router's state (ratings, mix, cost, decision latency) and users' preferences."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from serving.deps import AdminDep, OptionalRuntimeDep, SessionDep
from serving.routing_schemas import (
    RouterStatePublic,
    RoutingPreferencesPublic,
    RoutingPreferencesUpdate,
)
from storage.clock import utc_now
from storage.repositories import BaseModelRepository, ResponseRepository, UserRepository

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/router")
def router_state(
    _admin: AdminDep,
    session: SessionDep,
    runtime: OptionalRuntimeDep,
    window_hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24.0,
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
        return RouterStatePublic(router=name, mix=mix)
    return RouterStatePublic(router="eagle", mix=mix, **learning.state())


@router.patch("/users/{user_id}/routing")
def update_user_preferences(
    user_id: str, body: RoutingPreferencesUpdate, _admin: AdminDep, session: SessionDep
) -> RoutingPreferencesPublic:
    updated = UserRepository(session).set_routing_preferences(
        user_id=user_id, changes=body.changes()
    )
    session.commit()
    return RoutingPreferencesPublic.of(updated)

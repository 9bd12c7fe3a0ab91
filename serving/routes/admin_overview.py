"""``GET /admin/overview``: the dashboard's live chart points; ``GET /admin/models``."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from serving.deps import AdminDep, SessionDep
from serving.metrics_history import MetricsHistory
from serving.routes.models import model_entries
from serving.schemas import ListPublic, ModelPublic

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/overview")
def overview(
    request: Request, _admin: AdminDep, since: Annotated[float, Query(ge=0)] = 0.0
) -> dict[str, Any]:
    """This process's points newer than ``since`` (unix seconds), oldest first."""
    history: MetricsHistory = request.app.state.metrics_history
    return {
        "bucket_seconds": history.interval_seconds,
        "now": time.time(),
        "points": history.points_since(since),
    }


@router.get("/models")
def list_base_models(_admin: AdminDep, session: SessionDep) -> ListPublic[ModelPublic]:
    """The base models (no ``auto``): what a job or an upload can name."""
    return ListPublic(data=model_entries(session))

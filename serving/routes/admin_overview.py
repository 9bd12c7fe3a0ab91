"""``GET /admin/overview``: the dashboard's live chart points; ``GET /admin/models``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from serving.deps import AdminDep, MetricsHistoryDep, SessionDep
from serving.routes.models import model_entries
from serving.schemas import ListPublic, ModelPublic, OverviewPublic

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/overview")
def overview(
    _admin: AdminDep,
    history: MetricsHistoryDep,
    since: Annotated[float, Query(ge=0)] = 0.0,
) -> OverviewPublic:
    """This process's points newer than ``since`` (unix seconds), oldest first."""
    return OverviewPublic(
        bucket_seconds=history.interval_seconds,
        now=time.time(),
        points=history.points_since(since),
    )


@router.get("/models")
def list_base_models(_admin: AdminDep, session: SessionDep) -> ListPublic[ModelPublic]:
    """The base models (no ``auto``): what a job or an upload can name."""
    return ListPublic(data=model_entries(session))

"""``GET /admin/overview``: the dashboard's live chart points."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from serving.deps import AdminDep, MetricsHistoryDep
from serving.schemas import OverviewPublic

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

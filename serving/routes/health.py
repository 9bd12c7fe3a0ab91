"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.deps import ServicesDep
from serving.readiness import check_readiness
from serving.schemas import HealthPublic, ReadinessPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": ReadinessPublic, "description": "Not ready: the checks say why"}},
)
def readyz(request: Request, services: ServicesDep, response: Response) -> ReadinessPublic:
    readiness = check_readiness(services, request.app.state.runtime)
    if readiness.status != "ready":
        response.status_code = 503
    return readiness

"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.deps import ServicesDep
from serving.readiness import check_readiness
from serving.schemas import HealthPublic, ReadinessPublic

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get("/readyz", response_model=ReadinessPublic)
def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    readiness = check_readiness(services, request.app.state.runtime)
    return JSONResponse(
        readiness.model_dump(), status_code=200 if readiness.status == "ready" else 503
    )

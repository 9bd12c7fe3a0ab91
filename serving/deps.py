"""Every FastAPI dependency, aliased once, so routes read as plain signatures."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session

from serving.auth import Principal, authenticate, bearer_token
from serving.completions import CompletionService
from serving.dashboard.session_auth import dashboard_principal
from serving.dashboard.sessions import COOKIE_NAME, SessionSigner
from serving.errors import ApiError
from serving.metrics import Metrics
from serving.metrics_history import MetricsHistory
from serving.runtime import ModelRuntime
from serving.services import Services
from serving.settings import Settings
from storage.tables import Scope

# Row ids are 64-bit signed integers (storage.tables.RowId): a cursor past
# them would overflow the database's integer rather than find nothing.
MAX_ROW_ID = 2**63 - 1
CursorQuery = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    # Routes that write commit before they return, so that nothing is
    # acknowledged before it is durable; whatever is left is rolled back here.
    with services.database.new_session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_session_signer(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.session_signer
    return signer


SessionSignerDep = Annotated[SessionSigner, Depends(get_session_signer)]


def get_principal(
    request: Request,
    services: ServicesDep,
    signer: SessionSignerDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """A Bearer key, or else the dashboard's session cookie (admin routes only)."""
    cookie = request.cookies.get(COOKIE_NAME)
    if authorization is None and cookie is not None:
        return dashboard_principal(request, cookie, services=services, signer=signer)
    token = bearer_token(authorization)
    return authenticate(token, database=services.database, settings=services.settings)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_user(principal: PrincipalDep) -> Principal:
    if principal.user_id is None or Scope.USER not in principal.scopes:
        raise ApiError(403, "this endpoint needs a user's API key", code="user_key_required")
    return principal


UserDep = Annotated[Principal, Depends(require_user)]


def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "this endpoint needs an admin key", code="admin_key_required")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "this server hosts no models", code="not_ready")
    return runtime


RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]


def get_optional_runtime(request: Request) -> ModelRuntime | None:
    runtime: ModelRuntime | None = getattr(request.app.state, "runtime", None)
    return runtime


OptionalRuntimeDep = Annotated[ModelRuntime | None, Depends(get_optional_runtime)]


def rate_limited_user(user: UserDep, services: ServicesDep) -> Principal:
    """The user, if their token bucket (in the shared cache) has a request left."""
    settings = services.settings
    assert user.user_id is not None
    bucket = services.cache.take_tokens(
        f"ratelimit:{user.user_id}",
        capacity=settings.server.rate_limit_burst,
        refill_per_second=settings.server.rate_limit_requests_per_minute / 60.0,
    )
    if not bucket.allowed:
        retry_after = max(1, math.ceil(bucket.retry_after_seconds))
        raise ApiError(
            429,
            f"rate limit reached; retry in {retry_after} s",
            code="rate_limited",
            headers={"Retry-After": str(retry_after)},
        )
    return user


RateLimitedUserDep = Annotated[Principal, Depends(rate_limited_user)]


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def get_completion_service(runtime: RuntimeDep, metrics: MetricsDep) -> CompletionService:
    return CompletionService(runtime, metrics)


CompletionServiceDep = Annotated[CompletionService, Depends(get_completion_service)]


def get_metrics_history(request: Request) -> MetricsHistory:
    history: MetricsHistory = request.app.state.metrics_history
    return history


MetricsHistoryDep = Annotated[MetricsHistory, Depends(get_metrics_history)]

"""The FastAPI application, built by ``create_app`` from opened services."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.api_docs import install_api_docs
from serving.dashboard import pages
from serving.dashboard.sessions import SessionSigner
from serving.errors import install_error_handlers
from serving.metrics import Metrics
from serving.metrics_history import MetricsHistory
from serving.request_limits import install_request_limits
from serving.routes import (
    adapters,
    admin_adapters,
    admin_jobs,
    admin_models,
    admin_overview,
    admin_router,
    admin_users,
    completions,
    examples,
    feedback,
    files,
    fine_tunes,
    fine_tuning,
    health,
    models,
    routing,
)
from serving.runtime import ModelRuntime
from serving.schemas import ERROR_RESPONSES
from serving.services import Services

DASHBOARD_STATIC = Path(__file__).parent / "dashboard" / "static"


def create_app(
    services: Services,
    *,
    runtime: ModelRuntime | None = None,
    close_services_on_shutdown: bool = True,
) -> FastAPI:
    """The app over opened services; with a ``runtime`` it also serves completions.

    Without one (admin-only processes, API tests) the completion endpoints
    answer 503.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            runtime.start()
        history.start()
        yield
        history.stop()
        if runtime is not None:
            runtime.stop()
        if close_services_on_shutdown:
            services.close()

    app = FastAPI(
        title="Tailor",
        version="0.1.0",
        description="Personalised LLM serving: routed base models and per-user LoRA experts.",
        lifespan=lifespan,
        # Served by install_api_docs from installed files: FastAPI's own pages use a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.runtime = runtime
    metrics = Metrics(services, runtime)
    app.state.metrics = metrics
    history = MetricsHistory(
        metrics.registry, interval_seconds=services.settings.server.dashboard_sample_seconds
    )
    app.state.metrics_history = history
    app.state.session_signer = SessionSigner.from_settings(services.settings)

    # Inside the request counter, so that refused requests are counted too.
    install_request_limits(app, services)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        # The route's template (/v1/fine-tunes/{job_id}), never the raw path:
        # ids in labels would grow the series without bound.
        template = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, template, str(response.status_code)).inc()
        metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app)
    install_api_docs(app)
    app.mount("/admin/static", StaticFiles(directory=DASHBOARD_STATIC), name="dashboard-static")
    # Before the admin API: a browser asking for /admin/users gets the page.
    app.include_router(pages.pages_router)
    app.include_router(pages.router)
    # Every error of the JSON API has one shape; the OpenAPI schema says so for each route.
    for api in (
        health,
        models,
        completions,
        feedback,
        examples,
        fine_tunes,
        files,
        fine_tuning,
        adapters,
        admin_users,
        admin_adapters,
        admin_jobs,
        admin_models,
        admin_router,
        admin_overview,
        routing,
    ):
        app.include_router(api.router, responses=ERROR_RESPONSES)
    return app

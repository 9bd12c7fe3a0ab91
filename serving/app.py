"""The FastAPI application, built by ``create_app`` from opened services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.errors import install_error_handlers
from serving.routes import adapters, admin_adapters, admin_users, health, models
from serving.services import Services


def create_app(services: Services, *, close_services_on_shutdown: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if close_services_on_shutdown:
            services.close()

    app = FastAPI(
        title="Tailor",
        version="0.1.0",
        description="Personalised LLM serving: routed base models and per-user LoRA experts.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(adapters.router)
    app.include_router(admin_users.router)
    app.include_router(admin_adapters.router)
    return app

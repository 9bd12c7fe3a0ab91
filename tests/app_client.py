"""The FastAPI app in process, on either deployment, for API tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from models.catalog import register_prepared_models
from models.store import load_prepared
from serving.app import create_app
from serving.services import Services
from serving.settings import load_settings
from tests.backends import REDIS_URL, deployment_database_url
from tests.server import prepared_model_store

ADMIN_KEY = "admin-" + secrets.token_hex(8)
DEPLOYMENTS = ["sqlite+memory", "postgresql+redis"]


@contextmanager
def app_client(
    deployment: str,
    tmp_path: Path,
    *,
    real_models: bool = True,
    **settings_overrides: Mapping[str, object],
) -> Iterator[TestClient]:
    """A client of a fresh app; the real model store is registered when asked.

    ``settings_overrides`` are ``load_settings``'s, per group (``server={...}``); they
    go on top of this client's own storage and admin key."""

    with deployment_database_url(deployment, tmp_path) as url:
        store = prepared_model_store() if real_models else tmp_path / "models"
        storage = {
            "data_dir": tmp_path,
            "model_store": store,
            "database_url": url,
            "redis_url": REDIS_URL if deployment == "postgresql+redis" else None,
            "cache_prefix": f"tailor-test-{secrets.token_hex(4)}:",
        }
        server = {"admin_key": ADMIN_KEY}
        settings = load_settings(
            **{
                **settings_overrides,
                "storage": {**storage, **settings_overrides.get("storage", {})},
                "server": {**server, **settings_overrides.get("server", {})},
            }
        )
        services = Services.open(settings)
        if real_models:
            with services.database.session() as session:
                register_prepared_models(
                    session,
                    load_prepared(store),
                    store_dir=settings.storage.model_store_dir,
                    prices=settings.router.prices,
                )
        with TestClient(create_app(services), raise_server_exceptions=False) as client:
            yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_KEY)


def new_user(client: TestClient, name: str) -> tuple[str, dict[str, str]]:
    """A new user made through the admin API: its id and its key's headers."""
    response = client.post("/admin/users", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"], bearer(response.json()["api_key"])


def services(client: TestClient) -> Any:
    """The app's services, for looking behind the API in a test."""
    return client.app.state.services  # type: ignore[attr-defined]

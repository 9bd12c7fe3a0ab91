"""The FastAPI app in process, on either deployment, for API tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from models.catalog import register_prepared_models
from models.store import load_prepared
from serving.app import create_app
from serving.services import Services
from storage.settings import load_settings
from tests.backends import REDIS_URL, deployment_database_url
from tests.server import prepared_model_store

ADMIN_KEY = "admin-" + secrets.token_hex(8)
DEPLOYMENTS = ["sqlite+memory", "postgresql+redis"]


@contextmanager
def app_client(
    deployment: str, tmp_path: Path, *, real_models: bool = True, **settings_overrides: object
) -> Iterator[TestClient]:
    """A client of a fresh app; the real model store is registered when asked."""

    with deployment_database_url(deployment, tmp_path) as url:
        store = prepared_model_store() if real_models else tmp_path / "models"
        settings = load_settings(
            data_dir=tmp_path,
            model_store=store,
            database_url=url,
            redis_url=REDIS_URL if deployment == "postgresql+redis" else None,
            admin_key=ADMIN_KEY,
            cache_prefix=f"tailor-test-{secrets.token_hex(4)}:",
            **settings_overrides,
        )
        services = Services.open(settings)
        if real_models:
            with services.database.session() as session:
                register_prepared_models(session, load_prepared(store), settings=settings)
        with TestClient(create_app(services), raise_server_exceptions=False) as client:
            yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_KEY)

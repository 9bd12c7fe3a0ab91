"""``GET /v1/models/{id}``: each listed model on its own, as ``openai`` retrieves it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app_client import ADMIN_KEY, app_client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client("sqlite+memory", tmp_path, real_models=False) as test_client:
        yield test_client


def user_headers(client: TestClient) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = client.post("/admin/users", json={"name": "models"}, headers=admin).json()
    return {"Authorization": f"Bearer {created['api_key']}"}


def test_every_listed_model_is_retrieved_as_listed(client: TestClient) -> None:
    headers = user_headers(client)
    listed = client.get("/v1/models", headers=headers).json()["data"]
    assert "auto" in {entry["id"] for entry in listed}
    for entry in listed:
        response = client.get(f"/v1/models/{entry['id']}", headers=headers)
        assert response.status_code == 200 and response.json() == entry


def test_an_unknown_model_is_a_404_in_openais_shape_and_needs_a_key(client: TestClient) -> None:
    response = client.get("/v1/models/no-such-model", headers=user_headers(client))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "no-such-model" in error["message"]
    assert client.get("/v1/models/auto").status_code == 401

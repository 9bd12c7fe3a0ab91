"""The admin user/key API and authentication, served in process.

Runs on both deployments: SQLite + in-process cache, and PostgreSQL + Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.services import Services
from serving.settings import load_settings
from storage.repositories import BaseModelRepository
from tests.app_client import ADMIN_KEY, DEPLOYMENTS, app_client


@pytest.fixture(params=DEPLOYMENTS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path, real_models=False) as test_client:
        with test_client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
            BaseModelRepository(session).upsert(
                model_id="tiny-1m",
                architecture="llama",
                path="tiny-1m",
                sha256="0" * 64,
                source="test",
                source_sha256="0" * 64,
                dtype="float16",
                size_bytes=2_000_000,
                parameter_count=1_000_000,
                context_length=2048,
                chat_template="{{ messages }}",
                cost_per_million_tokens=0.001,
            )
        yield test_client


def admin(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response_json: dict[str, object], error_type: str) -> None:
    error = response_json["error"]
    assert isinstance(error, dict)
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readiness_reports_each_check(client: TestClient) -> None:
    response = client.get("/readyz")
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["cache"] == "ok"
    # The test model is registered but not in this empty model store.
    assert response.status_code == 503
    assert "tiny-1m" in body["checks"]["models"]


def test_admin_creates_a_user_whose_key_works_once_shown(client: TestClient) -> None:
    created = client.post("/admin/users", json={"name": "ada"}, headers=admin())
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "ada" and body["id"].startswith("usr_")
    user_key = body["api_key"]

    models = client.get("/v1/models", headers=admin(user_key))
    assert models.status_code == 200
    ids = [m["id"] for m in models.json()["data"]]
    assert ids == ["tiny-1m", "auto"]

    listed = client.get("/admin/users", headers=admin()).json()
    assert listed["object"] == "list"
    (user,) = listed["data"]
    assert user["id"] == body["id"]
    (key,) = user["keys"]
    assert key["id"] == body["key_id"] and key["revoked"] is False
    # The secret is never shown again, in any field.
    assert user_key not in str(listed)
    assert user_key.startswith(key["prefix"])


def test_a_revoked_key_is_refused_at_once(client: TestClient) -> None:
    user = client.post("/admin/users", json={"name": "bob"}, headers=admin()).json()
    second = client.post(f"/admin/users/{user['id']}/keys", headers=admin())
    assert second.status_code == 201
    second_key = second.json()["api_key"]
    assert second_key != user["api_key"]

    assert client.get("/v1/models", headers=admin(user["api_key"])).status_code == 200
    revoked = client.delete(f"/admin/keys/{user['key_id']}", headers=admin())
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True

    refused = client.get("/v1/models", headers=admin(user["api_key"]))
    assert refused.status_code == 401
    assert_error(refused.json(), "authentication_error")
    # The user's other key still works.
    assert client.get("/v1/models", headers=admin(second_key)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, admin("tlr_wrong")],
)
def test_missing_or_wrong_keys_get_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v1/models"), ("GET", "/admin/users")):
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert_error(response.json(), "authentication_error")


def test_a_user_key_on_admin_routes_gets_403(client: TestClient) -> None:
    user_key = client.post("/admin/users", json={"name": "eve"}, headers=admin()).json()["api_key"]
    for method, path in (
        ("GET", "/admin/users"),
        ("POST", "/admin/users"),
        ("DELETE", "/admin/keys/key_anything"),
    ):
        response = client.request(method, path, headers=admin(user_key), json={"name": "x"})
        assert response.status_code == 403
        assert_error(response.json(), "permission_error")


def test_a_key_with_admin_scope_can_administer(client: TestClient) -> None:
    root = client.post(
        "/admin/users", json={"name": "root", "scopes": ["user", "admin"]}, headers=admin()
    ).json()
    assert client.get("/admin/users", headers=admin(root["api_key"])).status_code == 200
    assert client.get("/v1/models", headers=admin(root["api_key"])).status_code == 200


def test_bad_bodies_get_422_and_change_nothing(client: TestClient) -> None:
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x", "scopes": ["root"]}, {"nom": 1}):
        response = client.post("/admin/users", json=body, headers=admin())
        assert response.status_code == 422, body
        assert_error(response.json(), "invalid_request_error")
    assert client.get("/admin/users", headers=admin()).json()["data"] == []


def test_duplicates_and_unknown_ids(client: TestClient) -> None:
    assert client.post("/admin/users", json={"name": "ada"}, headers=admin()).status_code == 201
    duplicate = client.post("/admin/users", json={"name": "ada"}, headers=admin())
    assert duplicate.status_code == 409
    assert_error(duplicate.json(), "conflict_error")
    for method, path in (
        ("POST", "/admin/users/usr_missing/keys"),
        ("DELETE", "/admin/keys/key_missing"),
        ("GET", "/admin/users/usr_missing"),
        ("GET", "/no/such/route"),
    ):
        response = client.request(method, path, headers=admin())
        assert response.status_code == 404, path
        assert_error(response.json(), "not_found_error")


def test_an_admin_sets_and_clears_a_users_fine_tune_limit(client: TestClient) -> None:
    ada = client.post("/admin/users", json={"name": "ada"}, headers=admin()).json()
    url = f"/admin/users/{ada['id']}/fine-tuning"
    assert (
        client.get(f"/admin/users/{ada['id']}", headers=admin()).json()["max_generic_rise"] is None
    )

    raised = client.patch(url, json={"max_generic_rise": 0.3}, headers=admin())
    assert raised.status_code == 200
    assert raised.json() == {
        "user_id": ada["id"],
        "max_generic_rise": 0.3,
        "max_probe_loss": None,
        "effective_max_generic_rise": 0.3,
        "effective_max_probe_loss": 0.05,
    }
    # A PATCH sets what it names; the other limit stays.
    both = client.patch(url, json={"max_probe_loss": 0.1}, headers=admin()).json()
    assert (both["max_generic_rise"], both["max_probe_loss"]) == (0.3, 0.1)
    assert (
        client.get(f"/admin/users/{ada['id']}", headers=admin()).json()["max_generic_rise"] == 0.3
    )

    # Out of range, not a number, unknown fields, missing: 422, and the limit stays.
    for body in (
        {"max_generic_rise": -0.1},
        {"max_generic_rise": 11},
        {"max_generic_rise": "x"},
        {"max_probe_loss": 0.9},
        {"max_generic_rise": 0.2, "other": 1},
        {},
    ):
        response = client.patch(url, json=body, headers=admin())
        assert response.status_code == 422, body
        assert_error(response.json(), "invalid_request_error")
    assert (
        client.get(f"/admin/users/{ada['id']}", headers=admin()).json()["max_generic_rise"] == 0.3
    )
    # A user's own key cannot set it; an unknown user is a 404.
    user = client.patch(url, json={"max_generic_rise": 5}, headers=admin(ada["api_key"]))
    assert user.status_code == 403
    missing = client.patch(
        "/admin/users/usr_missing/fine-tuning", json={"max_generic_rise": 0.2}, headers=admin()
    )
    assert missing.status_code == 404

    cleared = client.patch(url, json={"max_generic_rise": None}, headers=admin()).json()
    # Back to the service's setting (TAILOR_FINETUNE_MAX_GENERIC_RISE, 10% by default).
    assert cleared["max_generic_rise"] is None and cleared["effective_max_generic_rise"] == 0.10
    assert cleared["max_probe_loss"] == 0.1


def test_users_are_paged(client: TestClient) -> None:
    for i in range(5):
        client.post("/admin/users", json={"name": f"user-{i}"}, headers=admin())
    first = client.get("/admin/users?limit=3", headers=admin()).json()
    assert len(first["data"]) == 3 and first["has_more"] is True
    after = first["data"][-1]["id"]
    rest = client.get(f"/admin/users?limit=3&after={after}", headers=admin()).json()
    assert [u["name"] for u in rest["data"]] == ["user-3", "user-4"]
    assert rest["has_more"] is False


def test_without_an_admin_key_setting_the_admin_api_is_closed(tmp_path: Path) -> None:
    settings = load_settings(
        storage={"data_dir": tmp_path, "redis_url": None, "database_url": None},
        server={"admin_key": None},
    )
    services = Services.open(settings)
    with TestClient(create_app(services)) as test_client:
        response = test_client.get("/admin/users", headers=admin(""))
        assert response.status_code == 401
        response = test_client.get("/admin/users", headers=admin("anything"))
        assert response.status_code == 401


def test_an_internal_error_never_leaks_details(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.repositories import UserRepository

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internal detail at /srv/tailor/db")

    monkeypatch.setattr(UserRepository, "list_page", explode)
    response = client.get("/admin/users", headers=admin())
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "internal server error", "type": "server_error", "code": None}
    }

"""End to end: the real `tailor serve` process over HTTP, with the real model store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage.migrate import head_revision
from tests.backends import REDIS_URL, postgres_schema
from tests.server import prepared_model_store, run_tailor, running_server

ADMIN_KEY = "admin-" + secrets.token_hex(8)
REAL_MODELS = {"smollm2-135m-instruct", "gemma-3-270m"}


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def server_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        "TAILOR_DATA_DIR": str(tmp_path),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY": ADMIN_KEY,
    }
    if request.param == "sqlite+memory":
        yield env
    else:
        with postgres_schema() as url:
            yield {
                **env,
                "TAILOR_DATABASE_URL": url,
                "TAILOR_REDIS_URL": REDIS_URL,
                "TAILOR_CACHE_PREFIX": f"tailor-e2e-{secrets.token_hex(4)}:",
            }


@pytest.mark.e2e
def test_a_fresh_server_serves_models_and_the_admin_api(server_env: dict[str, str]) -> None:
    with running_server(server_env) as server:
        print(f"cold start to ready: {server.startup_seconds:.2f} s")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            ready = http.get("/readyz").json()
            assert ready["status"] == "ready", ready

            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            created = http.post("/admin/users", json={"name": "ada"}, headers=admin)
            assert created.status_code == 201
            user = {"Authorization": f"Bearer {created.json()['api_key']}"}

            models = http.get("/v1/models", headers=user).json()["data"]
            assert {m["id"] for m in models} == REAL_MODELS | {"auto"}
            by_id = {m["id"]: m for m in models}
            assert by_id["smollm2-135m-instruct"]["chat"] is True
            assert by_id["gemma-3-270m"]["chat"] is False
            # Price follows size unless configured.
            assert (
                by_id["gemma-3-270m"]["cost_per_million_tokens"]
                > by_id["smollm2-135m-instruct"]["cost_per_million_tokens"]
            )

            assert http.get("/admin/users", headers=user).status_code == 403
            revoked = http.delete(f"/admin/keys/{created.json()['key_id']}", headers=admin)
            assert revoked.status_code == 200
            assert http.get("/v1/models", headers=user).status_code == 401


@pytest.mark.e2e
def test_data_survives_a_restart(tmp_path: Path) -> None:
    env = {
        "TAILOR_DATA_DIR": str(tmp_path),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY": ADMIN_KEY,
    }
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with running_server(env) as server:
        key = httpx.post(f"{server.url}/admin/users", json={"name": "ada"}, headers=admin).json()[
            "api_key"
        ]
    with running_server(env) as server:
        users = httpx.get(f"{server.url}/admin/users", headers=admin).json()["data"]
        assert [u["name"] for u in users] == ["ada"]
        listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert listed.status_code == 200


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("env", "setting", "problem"),
    [
        (
            {"TAILOR_DATABASE_URL": "mysql://root@127.0.0.1/test"},
            "TAILOR_DATABASE_URL",
            "unsupported",
        ),
        ({"TAILOR_DATABASE_URL": "::not a url::"}, "TAILOR_DATABASE_URL", "not a database URL"),
        (
            {"TAILOR_DATABASE_URL": "postgresql://tailor:hunter2@127.0.0.1:1/test"},
            "TAILOR_DATABASE_URL",
            "cannot connect",
        ),
        ({"TAILOR_REDIS_URL": "redis://127.0.0.1:1/0"}, "TAILOR_REDIS_URL", ""),
        ({"TAILOR_REDIS_URL": "http://127.0.0.1:6379"}, "TAILOR_REDIS_URL", ""),
        ({"TAILOR_PORT": "eighty"}, "TAILOR_PORT", ""),
    ],
)
def test_bad_settings_stop_with_one_line_naming_the_setting(
    tmp_path: Path, env: dict[str, str], setting: str, problem: str
) -> None:
    result = run_tailor(["serve"], {"TAILOR_DATA_DIR": str(tmp_path), **env}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tailor: error: {setting}: ")
    assert problem in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "hunter2" not in result.stderr


@pytest.mark.slow
def test_db_upgrade_keeps_existing_data(tmp_path: Path) -> None:
    env = {"TAILOR_DATA_DIR": str(tmp_path)}
    created = run_tailor(["admin", "create-user", "ada"], env)
    assert created.returncode == 0, created.stderr
    assert "api key (shown once): tlr_" in created.stdout
    upgraded = run_tailor(["db", "upgrade"], env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema at revision {head_revision()}" in upgraded.stdout
    duplicate = run_tailor(["admin", "create-user", "ada"], env)
    assert duplicate.returncode == 2
    assert "already exists" in duplicate.stderr

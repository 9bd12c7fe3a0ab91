"""Database outages: 503 with Retry-After while the database is gone, recovery without a restart.

The PostgreSQL outages stop a private server (``tests/private_postgres.py``),
never the machine's shared one. The SQLite outage is another connection
holding the database's write lock past the busy timeout, as a backup or a
script in another process would.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response as HttpResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from models.catalog import register_prepared_models
from models.store import load_prepared
from serving.app import create_app
from serving.services import Services
from serving.settings import load_settings
from storage.database import Database
from storage.errors import BackendUnavailable
from storage.repositories import ResponseRepository
from tests.app_client import ADMIN, ADMIN_KEY, bearer
from tests.private_postgres import PASSWORD, PrivatePostgres, private_postgres
from tests.server import free_port, prepared_model_store


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


@contextmanager
def client_of(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """An app over ``database_url`` with the prepared models registered, cache in process."""
    store = prepared_model_store()
    settings = load_settings(
        storage={
            "data_dir": tmp_path,
            "model_store": store,
            "database_url": database_url,
            "redis_url": None,
        },
        server={"admin_key": ADMIN_KEY},
    )
    services = Services.open(settings)
    with services.database.session() as session:
        register_prepared_models(
            session,
            load_prepared(store),
            store_dir=settings.storage.model_store_dir,
            prices=settings.router.prices,
        )
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        yield client


def new_user_with_response(client: TestClient) -> tuple[dict[str, str], str]:
    """A user's key, and the id of a logged response of theirs to give feedback on."""
    body = client.post("/admin/users", json={"name": f"u{secrets.token_hex(4)}"}, headers=ADMIN)
    assert body.status_code == 201, body.text
    user_id = body.json()["id"]
    response_id = f"chatcmpl_{secrets.token_hex(6)}"
    services: Any = client.app.state.services  # type: ignore[attr-defined]
    with services.database.session() as session:
        ResponseRepository(session).record(
            response_id=response_id,
            user_id=user_id,
            base_model_id="smollm2-135m-instruct",
            endpoint="chat.completions",
            request={"messages": [{"role": "user", "content": "hi"}]},
            output_text="hello!",
            finish_reason="stop",
            routing_decision={"model": "smollm2-135m-instruct", "reason": "forced"},
            adapters_used=[],
            prompt_tokens=5,
            completion_tokens=2,
        )
    return bearer(body.json()["api_key"]), response_id


def assert_unavailable(response: HttpResponse) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert error["type"] == "overloaded_error"
    assert "TAILOR_DATABASE_URL" in error["message"]
    assert PASSWORD not in response.text


def sign_in(client: TestClient) -> None:
    """A dashboard session cookie in ``client`` (the row lives in the database)."""
    signed_in = client.post("/admin/login", data={"key": ADMIN_KEY}, follow_redirects=False)
    assert signed_in.status_code == 303, signed_in.text


PAGE = {"Accept": "text/html"}


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_outage_answers_503_and_the_service_recovers_on_its_own(
    private_pg: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with client_of(private_pg.url, tmp_path) as client:
        key, response_id = new_user_with_response(client)
        sign_in(client)
        assert client.get("/v1/examples", headers=key).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/admin/users", headers=PAGE).status_code == 200

        private_pg.stop()

        feedback = {"response_id": response_id, "rating": 1}
        assert_unavailable(client.get("/v1/examples", headers=key))
        assert_unavailable(client.post("/v1/feedback", json=feedback, headers=key))
        # The bootstrap admin key needs no database; the route itself does.
        assert_unavailable(client.get("/admin/users", headers=ADMIN))
        assert_unavailable(client.post("/admin/users", json={"name": "late"}, headers=ADMIN))
        page = client.get("/admin/users", headers=PAGE)
        assert page.status_code == 503
        assert page.headers["retry-after"] == "5"
        assert page.headers["content-type"].startswith("text/html")
        assert "TAILOR_DATABASE_URL" in page.text and PASSWORD not in page.text

        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert ready.json()["status"] == "not_ready"
        assert checks["database"].startswith("TAILOR_DATABASE_URL: ")
        assert f"127.0.0.1:{private_pg.port}" in checks["database"]
        assert PASSWORD not in ready.text
        assert checks["cache"] == "ok"
        assert checks["models"] != "ok"
        # Liveness: the process answers; restarting it would not help.
        assert client.get("/healthz").status_code == 200
        # Metrics still scrape, and say the database is down.
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "tailor_database_up 0.0" in metrics.text

        private_pg.start()

        # The same app, the same pool: pre-ping replaces the dead connections.
        assert client.get("/v1/examples", headers=key).status_code == 200
        given = client.post("/v1/feedback", json=feedback, headers=key)
        assert given.status_code == 201 and given.json()["duplicate"] is False
        names = [u["name"] for u in client.get("/admin/users", headers=ADMIN).json()["data"]]
        assert len(names) == 1 and "late" not in names
        assert client.get("/admin/users", headers=PAGE).status_code == 200
        assert client.get("/readyz").json() == {
            "status": "ready",
            "checks": {"database": "ok", "cache": "ok", "models": "ok"},
        }
        assert "tailor_database_up 1.0" in client.get("/metrics").text
        # A statement error after the outage is still no outage.
        duplicate = client.post("/admin/users", json={"name": names[0]}, headers=ADMIN)
        assert duplicate.status_code == 409
    assert PASSWORD not in caplog.text


@pytest.mark.postgres
@pytest.mark.slow
def test_connection_lost_in_a_transaction_is_backend_unavailable_at_commit(
    private_pg: PrivatePostgres,
) -> None:
    database = Database(private_pg.url)
    try:
        with database.session() as session:
            session.execute(text("CREATE TABLE notes (body text NOT NULL)"))
        session = database.new_session()
        session.execute(text("INSERT INTO notes VALUES ('unacknowledged')"))
        private_pg.stop()
        with pytest.raises(BackendUnavailable) as raised:
            session.commit()
        assert raised.value.setting == "TAILOR_DATABASE_URL"
        assert PASSWORD not in str(raised.value)
        session.close()
        with pytest.raises(BackendUnavailable), database.session() as later:
            later.execute(text("SELECT 1"))

        private_pg.start()
        with database.session() as session:
            rows = session.execute(text("SELECT body FROM notes")).scalars().all()
        assert rows == []
    finally:
        database.dispose()


@contextmanager
def unreachable_database(backend: str, tmp_path: Path) -> Iterator[Database]:
    if backend == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'gone' / 'tailor.db'}")
        # Database() makes the directory; without it the file cannot be opened.
        (tmp_path / "gone").rmdir()
    else:
        # Nothing listens on a port just freed: the connection is refused.
        database = Database(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x")
    try:
        yield database
    finally:
        database.dispose()


@pytest.mark.postgres
def test_outages_become_backend_unavailable_and_statement_errors_keep_their_type(
    database: Database, tmp_path: Path
) -> None:
    with unreachable_database(database.backend, tmp_path) as gone:
        with pytest.raises(BackendUnavailable) as raised, gone.session() as session:
            session.execute(text("SELECT 1"))
        assert raised.value.setting == "TAILOR_DATABASE_URL"
        assert PASSWORD not in str(raised.value)
        # A request's session connects lazily, at its first query.
        request_session = gone.new_session()
        with pytest.raises(BackendUnavailable):
            request_session.execute(text("SELECT 1"))
        request_session.close()
        with pytest.raises(BackendUnavailable):
            gone.ping()

    # A bad statement or a broken constraint is the caller's error, not an outage.
    with pytest.raises(DBAPIError), database.session() as session:
        session.execute(text("SELECT * FROM no_such_table"))
    with database.session() as session:
        session.execute(text("CREATE TABLE pairs (k integer PRIMARY KEY)"))
        session.execute(text("INSERT INTO pairs VALUES (1)"))
    with pytest.raises(IntegrityError), database.session() as session:
        session.execute(text("INSERT INTO pairs VALUES (1)"))


@pytest.mark.slow
def test_sqlite_locked_past_the_busy_timeout_answers_503_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tailor.db"
    with client_of(f"sqlite:///{path}", tmp_path) as client:
        key, _ = new_user_with_response(client)
        assert client.get("/v1/examples", headers=key).status_code == 200

        # Another process (a backup, a long script) holds the write lock.
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with caplog.at_level(logging.ERROR, logger="serving.errors"):
                assert_unavailable(client.get("/v1/examples", headers=key))
                ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "database is locked" in ready.json()["checks"]["database"]
            assert "backend unavailable on GET /v1/examples" in caplog.text
        finally:
            holder.rollback()
            holder.close()

        assert client.get("/v1/examples", headers=key).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_pool_busy_past_its_timeout_is_backend_unavailable(tmp_path: Path) -> None:
    """Every connection held by slow work: the next unit of work is a 503, not a 500."""
    database = Database(f"sqlite:///{tmp_path / 'tailor.db'}", pool_timeout_seconds=0.2)
    pool_size = database.engine.pool.size() + database.engine.pool._max_overflow  # type: ignore[attr-defined]
    held = [database.engine.connect() for _ in range(pool_size)]
    try:
        with pytest.raises(BackendUnavailable) as raised, database.session() as session:
            session.execute(text("SELECT 1"))
        assert "every database connection stayed busy" in str(raised.value)
    finally:
        for connection in held:
            connection.close()
    with database.session() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1
    database.dispose()

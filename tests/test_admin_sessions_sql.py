"""Dashboard sessions live in SQL: a sign-out outlives a cache flush and a restart,
and a validly signed cookie with a malformed payload is no session, never a 500.

The Redis flushed here is a private ``redis-server`` on a free port, never the
machine's shared one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.dashboard.sessions import COOKIE_NAME
from serving.services import Services
from serving.settings import load_settings
from storage.database import Database
from storage.repositories import AdminSessionRepository
from storage.tables import AdminSessionRecord
from tests.app_client import ADMIN, ADMIN_KEY, DEPLOYMENTS, app_client
from tests.backends import postgres_schema
from tests.private_redis import PrivateRedis, private_redis_server
from tests.test_dashboard_sessions import BROWSER, JSON, replace_cookie, sign_in

SESSION_SECRET = "test-session-secret-" + secrets.token_hex(8)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis_server(tmp_path) as server:
        yield server


@contextmanager
def serving(
    database_url: str,
    data_dir: Path,
    *,
    redis_url: str | None,
    admin_key: str = ADMIN_KEY,
    session_secret: str | None = None,
) -> Iterator[TestClient]:
    """A fresh app (fresh services, fresh cache) over ``database_url``: one "process"."""
    settings = load_settings(
        storage={
            "data_dir": data_dir,
            "model_store": data_dir / "models",
            "database_url": database_url,
            "redis_url": redis_url,
            "cache_prefix": f"tailor-test-{secrets.token_hex(4)}:",
        },
        server={"admin_key": admin_key, "session_secret": session_secret},
    )
    with TestClient(create_app(Services.open(settings)), raise_server_exceptions=False) as client:
        yield client


def signed_in_cookie(client: TestClient) -> tuple[str, str]:
    """Signs in; returns the session cookie and the page's CSRF token."""
    token = sign_in(client)
    cookie = client.cookies.get(COOKIE_NAME)
    assert cookie is not None
    return cookie, token


def sign_out(client: TestClient, cookie: str, token: str) -> None:
    replace_cookie(client, cookie)
    out = client.post("/admin/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303


def admin_status(client: TestClient, cookie: str) -> int:
    replace_cookie(client, cookie)
    return client.get("/admin/users", headers=JSON).status_code


@pytest.mark.postgres
def test_a_sign_out_outlives_a_redis_flush(tmp_path: Path, private_redis: PrivateRedis) -> None:
    with (
        postgres_schema() as url,
        serving(url, tmp_path, redis_url=private_redis.url) as client,
    ):
        ended, token = signed_in_cookie(client)
        live, _ = signed_in_cookie(client)
        sign_out(client, ended, token)
        assert admin_status(client, ended) == 401

        private_redis.flush()

        assert admin_status(client, ended) == 401
        page = client.get("/admin/jobs", headers=BROWSER, follow_redirects=False)
        assert page.status_code == 303
        # The flush ends nothing either: the other sign-in still counts.
        assert admin_status(client, live) == 200


def test_a_sign_out_outlives_a_restart(database_url: str, tmp_path: Path) -> None:
    with serving(database_url, tmp_path, redis_url=None) as before:
        ended, token = signed_in_cookie(before)
        live, _ = signed_in_cookie(before)
        sign_out(before, ended, token)
        assert admin_status(before, ended) == 401

    # A new process: a new, empty in-process cache over the same database.
    with serving(database_url, tmp_path, redis_url=None) as after:
        assert admin_status(after, ended) == 401
        assert admin_status(after, live) == 200
        replace_cookie(after, ended)
        again = after.get("/admin/users", headers=JSON)
        assert again.json()["error"]["code"] == "session_expired"


def test_a_new_bootstrap_key_still_ends_its_sessions(tmp_path: Path) -> None:
    # With a set session secret the old cookie still verifies: the row alone
    # must not keep it alive once the key that signed in is gone.
    url = f"sqlite:///{tmp_path / 'tailor.db'}"
    with serving(url, tmp_path, redis_url=None, session_secret=SESSION_SECRET) as before:
        kept, _ = signed_in_cookie(before)
    new_key = "admin-" + secrets.token_hex(8)
    with serving(
        url, tmp_path, redis_url=None, admin_key=new_key, session_secret=SESSION_SECRET
    ) as after:
        assert admin_status(after, kept) == 401


def test_sign_in_records_the_session_and_purges_expired_ones(database: Database) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with database.session() as session:
        repository = AdminSessionRepository(session)
        repository.start(
            session_id="old",
            key_id=None,
            key_fingerprint="f" * 32,
            created_at=now - timedelta(hours=9),
            expires_at=now - timedelta(hours=1),
        )
        repository.start(
            session_id="ended",
            key_id=None,
            key_fingerprint="f" * 32,
            created_at=now - timedelta(hours=1),
            expires_at=now + timedelta(hours=7),
        )
        repository.end(session_id="ended", now=now - timedelta(minutes=30))
    with database.session() as session:
        repository = AdminSessionRepository(session)
        repository.start(
            session_id="new",
            key_id=None,
            key_fingerprint="f" * 32,
            created_at=now,
            expires_at=now + timedelta(hours=8),
        )
    with database.session() as session:
        rows = {row.id: row for row in session.query(AdminSessionRecord)}
        repository = AdminSessionRepository(session)
        # The expired row is gone; the ended one stays ended until it expires.
        assert set(rows) == {"ended", "new"}
        assert rows["ended"].ended_at == now - timedelta(minutes=30)
        assert repository.find_live(session_id="ended") is None
        assert repository.find_live(session_id="old") is None
        live = repository.find_live(session_id="new")
        assert live is not None and live.expires_at == now + timedelta(hours=8)
        # Ending twice keeps the first time.
        repository.end(session_id="ended", now=now)
    with database.session() as session:
        ended = session.get(AdminSessionRecord, "ended")
        assert ended is not None and ended.ended_at == now - timedelta(minutes=30)


# --- Cookies signed with the right secret but holding something odd --------


@dataclass(frozen=True)
class Raw:
    """A JSON literal written as is (``1e309`` parses to infinity)."""

    text: str


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(body_json: str) -> str:
    """A cookie as the server signs one, with SESSION_SECRET."""
    body = b64(body_json.encode())
    digest = hmac.new(SESSION_SECRET.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{b64(digest)}"


def payload_json(fields: dict[str, object]) -> str:
    parts = [
        f"{json.dumps(name)}:{value.text if isinstance(value, Raw) else json.dumps(value)}"
        for name, value in fields.items()
    ]
    return "{" + ",".join(parts) + "}"


@dataclass
class SignedIn:
    client: TestClient
    payload: dict[str, object]


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def signed_in(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SignedIn]:
    """One live bootstrap-key session per deployment; the cases reuse its id."""
    with app_client(
        request.param,
        tmp_path_factory.mktemp("odd-cookies"),
        real_models=False,
        server={"session_secret": SESSION_SECRET},
    ) as client:
        cookie, _ = signed_in_cookie(client)
        body = cookie.partition(".")[0]
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        assert set(payload) == {"sid", "kid", "fp", "exp"}
        yield SignedIn(client, payload)


def test_the_cookie_is_signed_as_these_tests_sign_it(signed_in: SignedIn) -> None:
    # The control for the cases below: the live session, re-signed here, is accepted.
    cookie = signed(payload_json(signed_in.payload))
    assert admin_status(signed_in.client, cookie) == 200


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"sid": ["SID"]}, id="sid-list"),
        pytest.param({"sid": 7}, id="sid-int"),
        pytest.param({"sid": ""}, id="sid-empty"),
        pytest.param({"sid": "x" * 65}, id="sid-too-long"),
        pytest.param({"sid": "a\u0000b"}, id="sid-nul"),
        pytest.param({"kid": "key_\u0000", "fp": None}, id="kid-nul"),
        pytest.param({"kid": 5}, id="kid-int"),
        pytest.param({"kid": {"x": 1}}, id="kid-dict"),
        pytest.param({"kid": "key_1", "fp": None}, id="kid-unknown-key"),
        pytest.param({"fp": 12345}, id="fp-number"),
        pytest.param({"fp": ["FP"]}, id="fp-list"),
        pytest.param({"fp": None}, id="fp-missing-for-bootstrap"),
        pytest.param({"exp": "nan"}, id="exp-nan-string"),
        pytest.param({"exp": Raw("NaN")}, id="exp-nan"),
        pytest.param({"exp": Raw("1e309")}, id="exp-inf"),
        pytest.param({"exp": Raw("Infinity")}, id="exp-infinity"),
        pytest.param({"exp": True}, id="exp-true"),
        pytest.param({"exp": "99999999999"}, id="exp-string"),
        pytest.param({"exp": Raw("1" + "0" * 400)}, id="exp-huge-int"),
        pytest.param({"exp": None}, id="exp-null"),
        pytest.param({"extra": 1}, id="extra-field"),
    ],
)
def test_a_signed_cookie_with_an_odd_payload_is_no_session(
    signed_in: SignedIn, change: dict[str, object]
) -> None:
    fields = dict(signed_in.payload)
    for name, value in change.items():
        # "SID"/"FP" stand for the live session's own values, so that only the
        # type is wrong and the row the cookie names exists.
        if value == ["SID"]:
            value = [fields["sid"]]
        elif value == ["FP"]:
            value = [fields["fp"]]
        fields[name] = value
    cookie = signed(payload_json(fields))
    client = signed_in.client

    replace_cookie(client, cookie)
    api = client.get("/admin/users", headers=JSON)
    assert api.status_code == 401, api.text
    assert api.json()["error"]["code"] == "session_expired"
    page = client.get("/admin/jobs", headers=BROWSER, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/admin/login")
    form = client.get("/admin/login", follow_redirects=False)
    assert form.status_code == 200
    signed_out = client.post("/admin/logout", data={}, follow_redirects=False)
    assert signed_out.status_code == 303
    # A Bearer key is untouched by whatever cookie comes with it.
    assert client.get("/admin/users", headers={**JSON, **ADMIN}).status_code == 200


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param("é.é", id="non-ascii"),
        pytest.param("abc.", id="no-signature"),
        pytest.param(".abc", id="no-body"),
        pytest.param("!!!.???", id="not-base64"),
    ],
)
def test_a_malformed_cookie_is_no_session(signed_in: SignedIn, cookie: str) -> None:
    client = signed_in.client
    client.cookies.clear()
    headers = [(b"accept", b"application/json"), (b"cookie", f"{COOKIE_NAME}={cookie}".encode())]
    response = client.get("/admin/users", headers=headers)
    assert response.status_code == 401

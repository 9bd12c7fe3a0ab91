"""The dashboard's sign-in, session cookie and CSRF protection, served in process.

The browser tests (test_dashboard_browser.py) drive the same through Chromium;
these check the security properties one by one, on both deployments.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.dashboard.pages import safe_next
from serving.dashboard.sessions import COOKIE_NAME, CSRF_HEADER, SessionSigner
from serving.deps import get_session_signer
from tests.app_client import ADMIN, ADMIN_KEY, DEPLOYMENTS, app_client, bearer
from tests.clock import FakeClock

JSON = {"Accept": "application/json"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(params=DEPLOYMENTS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path, real_models=False) as test_client:
        yield test_client


def sign_in(client: TestClient, key: str = ADMIN_KEY) -> str:
    """Signs in and returns the page's CSRF token."""
    response = client.post("/admin/login", data={"key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get("/admin/users", headers=BROWSER)
    assert page.status_code == 200
    return csrf_of(page.text)


def csrf_of(html: str) -> str:
    marker = '<meta name="csrf-token" content="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def with_session_clock(client: TestClient, clock: FakeClock) -> SessionSigner:
    """Makes the app issue and read sessions on ``clock``; returns the signer it uses."""
    app = client.app
    assert isinstance(app, FastAPI)
    signer = SessionSigner.from_settings(app.state.services.settings, clock=clock)
    app.dependency_overrides[get_session_signer] = lambda: signer
    return signer


def replace_cookie(client: TestClient, value: str) -> None:
    client.cookies.clear()
    client.cookies.set(COOKIE_NAME, value)


def user_count(client: TestClient) -> int:
    return len(client.get("/admin/users", headers=ADMIN).json()["data"])


def test_sign_in_sets_a_signed_httponly_strict_expiring_cookie(client: TestClient) -> None:
    response = client.post(
        "/admin/login", data={"key": ADMIN_KEY, "next": "/admin/jobs"}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/jobs"
    header = response.headers["set-cookie"]
    cookie = SimpleCookie()
    cookie.load(header)
    morsel = cookie[COOKIE_NAME]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "strict"
    assert morsel["path"] == "/admin"
    assert int(morsel["max-age"]) == 480 * 60
    # Nothing of the key travels in the cookie.
    assert ADMIN_KEY not in header
    assert ADMIN_KEY[-8:] not in morsel.value


def test_wrong_key_and_user_key_are_refused_without_a_cookie(client: TestClient) -> None:
    wrong = client.post("/admin/login", data={"key": "not-a-key"}, follow_redirects=False)
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    assert "That key is not valid." in wrong.text

    user_key = client.post("/admin/users", json={"name": "ann"}, headers=ADMIN).json()["api_key"]
    as_user = client.post("/admin/login", data={"key": user_key}, follow_redirects=False)
    assert as_user.status_code == 403
    assert "set-cookie" not in as_user.headers
    assert "not an admin key" in as_user.text
    assert user_key not in as_user.text
    # And the user key gets 403 from the admin API, as before.
    assert client.get("/admin/users", headers=bearer(user_key)).status_code == 403


def test_pages_need_a_session_and_never_show_a_key(client: TestClient) -> None:
    for path in ("/admin/", "/admin/users", "/admin/adapters", "/admin/jobs", "/admin/router"):
        response = client.get(path, headers=BROWSER, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/login?next=")

    sign_in(client)
    created = client.post("/admin/users", json={"name": "bo"}, headers=ADMIN).json()
    for path in ("/admin/", "/admin/users", "/admin/adapters", "/admin/jobs", "/admin/router"):
        page = client.get(path, headers=BROWSER)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert ADMIN_KEY not in page.text
        assert created["api_key"] not in page.text
    # The user list the Users page reads holds no key either.
    listed = client.get("/admin/users", headers=JSON).text
    assert created["api_key"] not in listed


def test_the_same_path_is_a_page_for_browsers_and_json_for_api_clients(
    client: TestClient,
) -> None:
    sign_in(client)
    page = client.get("/admin/users", headers=BROWSER)
    assert '<main id="app">' in page.text
    as_json = client.get("/admin/users", headers=JSON)
    assert as_json.json()["object"] == "list"
    # A Bearer client gets JSON whatever it accepts.
    with_key = client.get("/admin/jobs", headers={**BROWSER, **ADMIN})
    assert with_key.json()["object"] == "list"


def test_state_changes_need_the_csrf_token_and_our_origin(client: TestClient) -> None:
    token = sign_in(client)
    before = user_count(client)

    no_token = client.post("/admin/users", json={"name": "x"}, headers=JSON)
    assert no_token.status_code == 403
    assert no_token.json()["error"]["code"] == "csrf_failed"
    wrong_token = client.post(
        "/admin/users", json={"name": "x"}, headers={**JSON, CSRF_HEADER: token[:-2] + "AA"}
    )
    assert wrong_token.status_code == 403
    other_site = client.post(
        "/admin/users",
        json={"name": "x"},
        headers={**JSON, CSRF_HEADER: token, "Origin": "https://evil.example"},
    )
    assert other_site.status_code == 403
    assert user_count(client) == before

    same_site = client.post(
        "/admin/users",
        json={"name": "x"},
        headers={**JSON, CSRF_HEADER: token, "Origin": "http://testserver"},
    )
    assert same_site.status_code == 201
    assert user_count(client) == before + 1


def test_a_forged_or_expired_cookie_is_no_session(tmp_path: Path) -> None:
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        sign_in(client)
        real = client.cookies.get(COOKIE_NAME)
        assert real is not None
        body, _, signature = real.partition(".")
        forged = body[:-4] + "AAAA" + "." + signature
        replace_cookie(client, forged)
        assert client.get("/admin/users", headers=JSON).status_code == 401
        page = client.get("/admin/jobs", headers=BROWSER, follow_redirects=False)
        assert page.status_code == 303

    with app_client("sqlite+memory", tmp_path / "expiring", real_models=False) as client:
        clock = FakeClock()
        signer = with_session_clock(client, clock)
        sign_in(client)
        kept = client.cookies.get(COOKIE_NAME)
        assert kept is not None
        clock.advance(signer.lifetime_seconds - 1)
        assert client.get("/admin/users", headers=JSON).status_code == 200
        clock.advance(1)
        # The browser drops it at Max-Age; the server refuses it even if kept.
        replace_cookie(client, kept)
        expired = client.get("/admin/users", headers=JSON)
        assert expired.status_code == 401
        assert expired.json()["error"]["code"] == "session_expired"


def test_sign_out_ends_the_session_even_for_a_kept_cookie(client: TestClient) -> None:
    token = sign_in(client)
    kept = client.cookies.get(COOKIE_NAME)
    assert kept is not None
    # Another site cannot sign the admin out.
    refused = client.post("/admin/logout", data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert client.get("/admin/users", headers=JSON).status_code == 200

    out = client.post("/admin/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/admin/login"
    replace_cookie(client, kept)
    assert client.get("/admin/users", headers=JSON).status_code == 401


def test_revoking_an_admin_users_key_ends_its_sessions(client: TestClient) -> None:
    operator = client.post(
        "/admin/users", json={"name": "operator", "scopes": ["admin"]}, headers=ADMIN
    ).json()
    sign_in(client, operator["api_key"])
    assert client.get("/admin/users", headers=JSON).status_code == 200
    client.delete(f"/admin/keys/{operator['key_id']}", headers=ADMIN)
    assert client.get("/admin/users", headers=JSON).status_code == 401


def test_sign_in_attempts_are_rate_limited(tmp_path: Path) -> None:
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        statuses = [
            client.post("/admin/login", data={"key": f"guess-{i}"}).status_code for i in range(12)
        ]
        assert statuses[:10] == [401] * 10
        assert statuses[10:] == [429, 429]
        # Even the right key waits: the bucket is the client's, not the key's.
        assert client.post("/admin/login", data={"key": ADMIN_KEY}).status_code == 429


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("/admin/jobs", "/admin/jobs"),
        ("/admin/jobs#ftjob_1", "/admin/jobs#ftjob_1"),
        ("https://evil.example/admin", "/admin/"),
        ("//evil.example/admin", "/admin/"),
        ("/admin//evil.example", "/admin/"),
        ("/admin\\evil", "/admin/"),
        ("/v1/models", "/admin/"),
        ("/admin/login", "/admin/"),
        (None, "/admin/"),
    ],
)
def test_after_sign_in_only_dashboard_paths_are_followed(asked: str | None, expected: str) -> None:
    assert safe_next(asked) == expected

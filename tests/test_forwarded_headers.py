"""X-Forwarded-For and X-Forwarded-Proto are believed only from the proxies in
TAILOR_FORWARDED_ALLOW_IPS: by default a client cannot pick its own sign-in
limiter bucket, or make the server think it came over HTTPS, by sending them.

The end-to-end tests run the real ``tailor serve`` (uvicorn), since it is
uvicorn that reads the headers; the app in process never does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from serving.dashboard.pages import LOGIN_ATTEMPTS_PER_MINUTE
from serving.dashboard.sessions import COOKIE_NAME
from serving.settings import load_settings
from storage.errors import ConfigurationError
from tests.app_client import app_client
from tests.server import running_server, served_env

ADMIN_KEY = "admin-" + secrets.token_hex(8)
# One small model: the server is ready sooner, and nothing here generates.
ONE_MODEL = '["smollm2-135m-instruct"]'


@contextmanager
def served(tmp_path: Path, **settings: str) -> Iterator[httpx.Client]:
    env = served_env(tmp_path, ADMIN_KEY, TAILOR_MODELS=ONE_MODEL, **settings)
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def wrong_key_attempts(http: httpx.Client, forwarded_for: list[str]) -> list[int]:
    return [
        http.post(
            "/admin/login",
            data={"key": f"guess-{index}"},
            headers={"X-Forwarded-For": address},
        ).status_code
        for index, address in enumerate(forwarded_for)
    ]


def sign_in_as_https(http: httpx.Client, forwarded_for: str) -> bool:
    """Signs in claiming HTTPS; returns whether the cookie came back ``Secure``."""
    response = http.post(
        "/admin/login",
        data={"key": ADMIN_KEY},
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": forwarded_for},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return bool(cookie[COOKIE_NAME]["secure"])


def rotating(count: int, *, first: int = 1) -> list[str]:
    return [f"203.0.113.{first + index}" for index in range(count)]


@pytest.mark.e2e
def test_by_default_forwarded_headers_are_not_believed(tmp_path: Path) -> None:
    with served(tmp_path) as http:
        # One attempt (the right key)...
        secure = sign_in_as_https(http, "198.51.100.1")
        remaining = LOGIN_ATTEMPTS_PER_MINUTE - 1
        statuses = wrong_key_attempts(http, rotating(remaining + 2))
    # ...and every attempt came from 127.0.0.1, whatever the header said.
    assert statuses == [401] * remaining + [429, 429]
    # Nor is the claimed scheme believed: this was plain HTTP.
    assert secure is False


@pytest.mark.e2e
def test_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    with served(tmp_path, TAILOR_FORWARDED_ALLOW_IPS="127.0.0.1") as http:
        assert sign_in_as_https(http, "198.51.100.1") is True
        # Each forwarded client has its own bucket...
        many = wrong_key_attempts(http, rotating(LOGIN_ATTEMPTS_PER_MINUTE + 2))
        # ...and one client is limited however it is proxied.
        one = wrong_key_attempts(http, ["198.51.100.7"] * (LOGIN_ATTEMPTS_PER_MINUTE + 1))
    assert many == [401] * (LOGIN_ATTEMPTS_PER_MINUTE + 2)
    assert one == [401] * LOGIN_ATTEMPTS_PER_MINUTE + [429]


def test_the_app_in_process_ignores_forwarded_headers(tmp_path: Path) -> None:
    # With no server in front, nothing rewrites the client from the header.
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        statuses = [
            client.post(
                "/admin/login",
                data={"key": f"guess-{index}"},
                headers={"X-Forwarded-For": address},
            ).status_code
            for index, address in enumerate(rotating(LOGIN_ATTEMPTS_PER_MINUTE + 1))
        ]
    assert statuses == [401] * LOGIN_ATTEMPTS_PER_MINUTE + [429]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        (" 127.0.0.1 , 10.0.0.0/8,::1 ", "127.0.0.1,10.0.0.0/8,::1"),
        ("*", "*"),
    ],
)
def test_trusted_proxies_are_read_as_a_list(value: str, expected: str | None) -> None:
    assert (
        load_settings(server={"forwarded_allow_ips": value}).server.forwarded_allow_ips == expected
    )


@pytest.mark.parametrize("value", ["proxy.local", "10.0.0.1/8", "*,10.0.0.1", "300.1.1.1"])
def test_a_malformed_trusted_proxy_is_a_configuration_error(value: str) -> None:
    # uvicorn would take it as a name no peer has, and trust nothing, silently.
    with pytest.raises(ConfigurationError) as caught:
        load_settings(server={"forwarded_allow_ips": value})
    assert "TAILOR_FORWARDED_ALLOW_IPS" in str(caught.value)

"""/docs and /redoc come from files installed with Tailor: nothing is fetched from elsewhere.

The browser check with the network off is in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.api_docs import STATIC_PREFIX, install_api_docs
from tests.app_client import app_client

# Every URL a page names: attributes and JavaScript string literals alike.
URL = re.compile(r"""(?:src|href)=["']([^"']+)["']|["'](https?://[^"']+)["']""")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client("sqlite+memory", tmp_path, real_models=False) as test_client:
        yield test_client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_name_only_this_servers_files(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = [a or b for a, b in URL.findall(response.text)]
    assert urls, "the page loads its scripts"
    assert all(url.startswith(STATIC_PREFIX + "/") for url in urls), urls
    assert "googleapis" not in response.text and "cdn." not in response.text
    for url in urls:  # and each of them is served
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert client.get("/openapi.json").json()["info"]["title"] == "Tailor"


def test_the_docs_need_an_app_without_fastapis_own_pages() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        install_api_docs(FastAPI())

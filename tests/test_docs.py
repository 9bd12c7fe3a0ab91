"""The documentation stays true to the code, and the repository stands alone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from serving.settings import setting_fields
from tests.app_client import app_client

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"


def test_every_route_of_the_openapi_schema_is_documented(tmp_path: Path) -> None:
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        schema = client.get("/openapi.json").json()
    doc = API_DOC.read_text()
    routes = [
        f"`{method.upper()} {path}`"
        for path, operations in schema["paths"].items()
        for method in operations
    ]
    assert len(routes) > 30
    missing = [route for route in routes if route not in doc]
    assert not missing, f"docs/api.md lacks {missing}"


def test_every_setting_is_documented() -> None:
    doc = API_DOC.read_text()
    # Every field of every group (settings.server.port, ...), by its environment variable.
    variables = [setting.variable for setting in setting_fields()]
    assert len(variables) > 50
    missing = [variable for variable in variables if f"`{variable}`" not in doc]
    assert not missing, f"docs/api.md lacks {missing}"


def test_no_file_reaches_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    outside = re.compile(rb"\.\./shared|shared/(?:data|API\.md|DESIGN\.md)")
    offenders = [
        name.decode()
        for name in tracked
        if name
        and (ROOT / name.decode()).is_file()
        and outside.search((ROOT / name.decode()).read_bytes())
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("target", ["docs/api.md", "docs/architecture.md", "data/README.md"])
def test_the_readme_links_the_documents(target: str) -> None:
    assert f"]({target})" in (ROOT / "README.md").read_text()
    assert (ROOT / target).is_file()

from __future__ import annotations

from pathlib import Path

import pytest

from storage.errors import ConfigurationError
from storage.settings import load_settings


def test_defaults_follow_the_api_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "REDIS_URL", "ADMIN_KEY", "HOST", "PORT"):
        monkeypatch.delenv(f"TAILOR_{name}", raising=False)
    settings = load_settings()
    assert settings.data_dir == Path("var")
    assert settings.resolved_database_url == f"sqlite:///{Path('var/tailor.db').resolve()}"
    assert settings.redis_url is None
    assert settings.admin_key is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.model_store_dir == Path("var/models")


def test_environment_is_read_with_the_tailor_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_DATA_DIR", "/srv/tailor")
    monkeypatch.setenv("TAILOR_PORT", "9001")
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "s3cret")
    monkeypatch.setenv("TAILOR_MODEL_COSTS", '{"gemma-3-270m": 0.5}')
    settings = load_settings()
    assert settings.data_dir == Path("/srv/tailor")
    assert settings.port == 9001
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.model_costs == {"gemma-3-270m": 0.5}
    assert settings.blob_dir == Path("/srv/tailor/blobs")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TAILOR_PORT", "eighty"),
        ("TAILOR_PORT", "70000"),
        ("TAILOR_MODEL_COSTS", "{not json"),
        ("TAILOR_MODEL_COSTS", '{"gemma-3-270m": -1}'),
        ("TAILOR_COST_PER_BILLION_PARAMETERS", "0"),
    ],
)
def test_a_malformed_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.setting == variable
    assert str(caught.value).startswith(f"{variable}: ")


def test_the_admin_key_is_read_from_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TAILOR_ADMIN_KEY", raising=False)
    key_file = tmp_path / "admin-key"
    key_file.write_text("from-the-file\n")
    monkeypatch.setenv("TAILOR_ADMIN_KEY_FILE", str(key_file))
    settings = load_settings()
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == "from-the-file"
    # A key given directly wins over the file.
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "direct")
    direct = load_settings().admin_key
    assert direct is not None and direct.get_secret_value() == "direct"


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_a_missing_or_empty_admin_key_file_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None
) -> None:
    monkeypatch.delenv("TAILOR_ADMIN_KEY", raising=False)
    key_file = tmp_path / "admin-key"
    if content is not None:
        key_file.write_text(content)
    monkeypatch.setenv("TAILOR_ADMIN_KEY_FILE", str(key_file))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert raised.value.setting == "TAILOR_ADMIN_KEY_FILE"
    assert str(key_file) in raised.value.problem

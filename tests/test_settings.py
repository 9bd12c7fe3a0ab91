"""The settings: read from flat ``TAILOR_*`` variables into groups by concern."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.settings import ENV_PREFIX, Settings, load_settings, setting_fields
from storage.errors import ConfigurationError


def test_defaults_follow_the_api_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_DIR", "DATABASE_URL", "REDIS_URL", "ADMIN_KEY", "HOST", "PORT"):
        monkeypatch.delenv(f"TAILOR_{name}", raising=False)
    settings = load_settings()
    assert settings.storage.data_dir == Path("var")
    assert settings.storage.resolved_database_url == f"sqlite:///{Path('var/tailor.db').resolve()}"
    assert settings.storage.redis_url is None
    assert settings.server.admin_key is None
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.storage.model_store_dir == Path("var/models")


def test_environment_is_read_with_the_tailor_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_DATA_DIR", "/srv/tailor")
    monkeypatch.setenv("TAILOR_PORT", "9001")
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "s3cret")
    monkeypatch.setenv("TAILOR_MODEL_COSTS", '{"gemma-3-270m": 0.5}')
    settings = load_settings()
    assert settings.storage.data_dir == Path("/srv/tailor")
    assert settings.server.port == 9001
    assert settings.server.admin_key is not None
    assert settings.server.admin_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.router.model_costs == {"gemma-3-270m": 0.5}
    assert settings.storage.blob_dir == Path("/srv/tailor/blobs")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TAILOR_PORT", "eighty"),
        ("TAILOR_PORT", "70000"),
        ("TAILOR_MODEL_COSTS", "{not json"),
        ("TAILOR_MODEL_COSTS", '{"gemma-3-270m": -1}'),
        ("TAILOR_COST_PER_BILLION_PARAMETERS", "0"),
        # One of each other group, and a JSON value with an error inside it.
        ("TAILOR_ROUTER_K", "0"),
        ("TAILOR_MAX_BATCH", "0"),
        ("TAILOR_FINETUNE_QUANTIZATION", "int3"),
        ("TAILOR_FORWARDED_ALLOW_IPS", "a-proxy"),
        ("TAILOR_GENERATION_DEFAULTS", '{"m": {"top_p": 0}}'),
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
    assert settings.server.admin_key is not None
    assert settings.server.admin_key.get_secret_value() == "from-the-file"
    # A key given directly wins over the file.
    monkeypatch.setenv("TAILOR_ADMIN_KEY", "direct")
    direct = load_settings().server.admin_key
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


def test_every_field_of_every_group_has_a_variable_of_its_own() -> None:
    fields = setting_fields()
    assert {field.group for field in fields} == set(Settings.model_fields)
    variables = [field.variable for field in fields]
    assert len(variables) == len(set(variables))
    assert all(variable.startswith(ENV_PREFIX) for variable in variables)
    # As docs/api.md says: the field is the variable less the prefix and the group's own.
    for field in fields:
        rest = field.variable.removeprefix(ENV_PREFIX).removeprefix(f"{field.group.upper()}_")
        assert field.name == rest.lower(), field


def test_the_groups_are_read_from_the_flat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_ROUTER_LATENCY_SLO_SECONDS", "12")
    monkeypatch.setenv("TAILOR_DEFAULT_MODEL", "gemma-3-270m")
    monkeypatch.setenv("TAILOR_MAX_BATCH", "3")
    monkeypatch.setenv("tailor_finetune_batch_size", "2")  # names are not case sensitive
    monkeypatch.setenv("TAILOR_REDIS_URL", "redis://cache:6379/0")
    settings = load_settings()
    assert settings.router.latency_slo_seconds == 12
    assert settings.router.default_model == "gemma-3-270m"
    assert settings.engine.max_batch == 3
    assert settings.finetune.batch_size == 2
    assert settings.storage.redis_url == "redis://cache:6379/0"


def test_an_override_replaces_only_the_fields_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_HOST", "0.0.0.0")
    monkeypatch.setenv("TAILOR_PORT", "9001")
    settings = load_settings(server={"port": 9002})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9002)


def test_a_misspelt_override_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(server={"prot": 9002})
    assert caught.value.setting == "server.prot"

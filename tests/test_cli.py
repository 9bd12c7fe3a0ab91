"""Commands that need an optional extra say which one to install when it is missing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from models.errors import ModelStoreError
from models.store.prepare_extra import require_prepare_extra
from serving import cli


def test_ray_commands_without_the_ray_extra_say_which_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on an install without the `ray` extra: the package cannot be found.
    monkeypatch.setattr(cli, "find_spec", lambda name: None if name == "ray" else object())
    result = CliRunner().invoke(cli.app, ["serve", "--print-config"])
    assert result.exit_code == 2
    assert "pip install 'tailor[ray]'" in result.output


def test_preparing_the_store_without_the_prepare_extra_says_which_extra() -> None:
    require_prepare_extra("gemma-3-270m", ("gguf",))  # installed here: nothing to say
    with pytest.raises(ModelStoreError) as raised:
        require_prepare_extra("gemma-3-270m", ("gguf", "a_module_that_is_not_installed"))
    assert str(raised.value) == (
        "gemma-3-270m: preparing it needs a_module_that_is_not_installed: "
        "pip install 'tailor[prepare]'"
    )

"""Answers that make sense by default: per-model sampling defaults, transcript turns.

The resolution order (setting, then the model's generation config, then the
built-in defaults) and its validation need no model; the answers themselves
are checked on the real models, in process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from router import DefaultModelRouter
from serving.completions.preparation import sampling
from serving.engine.detokenize import IncrementalDetokenizer
from serving.generation_defaults import BUILT_IN, GenerationDefaults, resolve
from serving.openai_schemas import ChatCompletionCreate
from serving.runtime import ModelRuntime
from serving.settings import GenerationOverride, load_settings
from storage.errors import ConfigurationError
from storage.tables import Response
from tests.app_client import ADMIN, app_client, bearer

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def model_dir(tmp_path: Path, config: dict[str, Any] | str | None) -> Path:
    """A model directory with ``config`` as its generation_config.json (none: no file)."""
    directory = tmp_path / "model"
    directory.mkdir()
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (directory / "generation_config.json").write_text(text)
    return directory


# Resolution order -------------------------------------------------------------


def test_a_model_without_sampling_config_gets_the_built_in_defaults(tmp_path: Path) -> None:
    # What the prepared models ship: token ids, nothing on sampling.
    directory = model_dir(tmp_path, {"bos_token_id": 1, "eos_token_id": 2})
    assert resolve(SMOL, directory, {}) == BUILT_IN
    assert BUILT_IN.temperature < 0.5 and BUILT_IN.top_p < 1.0


def test_no_generation_config_at_all_is_the_built_in_defaults(tmp_path: Path) -> None:
    assert resolve(SMOL, model_dir(tmp_path, None), {}) == BUILT_IN


def test_the_generation_config_is_read(tmp_path: Path) -> None:
    directory = model_dir(
        tmp_path,
        {
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.95,
            "top_k": 20,  # not one of Tailor's
            "max_new_tokens": 100,
            "stop_strings": "###",
        },
    )
    assert resolve(SMOL, directory, {}) == GenerationDefaults(
        temperature=0.6, top_p=0.95, max_tokens=100, stop=("###",)
    )


def test_do_sample_false_in_the_config_is_greedy(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, {"do_sample": False, "temperature": 0.9})
    defaults = resolve(SMOL, directory, {})
    assert defaults.temperature == 0.0
    assert defaults.top_p == BUILT_IN.top_p


@pytest.mark.parametrize(
    "config",
    [
        {"temperature": 3.0, "top_p": 0.0, "max_new_tokens": 0, "stop_strings": [""]},
        {"temperature": "hot", "top_p": True, "max_new_tokens": 1.5, "stop_strings": 7},
        {"stop_strings": ["a", "b", "c", "d", "e"]},
        "{not json",
        "[1, 2]",
    ],
)
def test_config_values_a_request_could_not_ask_for_are_skipped(
    tmp_path: Path, config: dict[str, Any] | str
) -> None:
    assert resolve(SMOL, model_dir(tmp_path, config), {}) == BUILT_IN


def test_the_setting_wins_field_by_field_over_the_config(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 100})
    overrides = {
        SMOL: GenerationOverride(temperature=0.0, stop=("\n\n",)),
        GEMMA: GenerationOverride(temperature=1.5),
    }
    assert resolve(SMOL, directory, overrides) == GenerationDefaults(
        temperature=0.0, top_p=0.95, max_tokens=100, stop=("\n\n",)
    )


def test_the_setting_is_parsed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TAILOR_GENERATION_DEFAULTS",
        json.dumps({SMOL: {"temperature": 0.3, "max_tokens": 64, "stop": ["END"]}}),
    )
    settings = load_settings()
    assert settings.engine.generation_defaults == {
        SMOL: GenerationOverride(temperature=0.3, max_tokens=64, stop=("END",))
    }
    monkeypatch.delenv("TAILOR_GENERATION_DEFAULTS")
    assert load_settings().engine.generation_defaults == {}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ('{"smollm2-135m-instruct": {"temperature": 2.5}}', f"{SMOL}.temperature"),
        ('{"smollm2-135m-instruct": {"top_p": 0}}', f"{SMOL}.top_p"),
        ('{"smollm2-135m-instruct": {"max_tokens": 0}}', f"{SMOL}.max_tokens"),
        ('{"smollm2-135m-instruct": {"stop": [""]}}', f"{SMOL}.stop.0"),
        ('{"smollm2-135m-instruct": {"stop": ["a", "b", "c", "d", "e"]}}', f"{SMOL}.stop"),
        ('{"smollm2-135m-instruct": {"temprature": 0.2}}', f"{SMOL}.temprature"),
        ('{"smollm2-135m-instruct": 0.2}', SMOL),
        ("{not json", None),
    ],
)
def test_a_malformed_setting_names_the_variable_and_where(
    monkeypatch: pytest.MonkeyPatch, value: str, where: str | None
) -> None:
    monkeypatch.setenv("TAILOR_GENERATION_DEFAULTS", value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert raised.value.setting == "TAILOR_GENERATION_DEFAULTS"
    if where is not None:
        assert raised.value.problem.startswith(f"{where}: ")


# A request's own fields win ---------------------------------------------------

DEFAULTS = GenerationDefaults(temperature=0.2, top_p=0.9, max_tokens=256, stop=("###",))


def chat(**fields: Any) -> ChatCompletionCreate:
    return ChatCompletionCreate.model_validate({"model": SMOL, "messages": FRANCE, **fields})


def test_fields_the_request_leaves_out_take_the_models_defaults() -> None:
    params = sampling(chat(), DEFAULTS, 256)
    assert (params.temperature, params.top_p, params.stop) == (0.2, 0.9, ("###",))
    # null is what OpenAI's clients send for "not given".
    params = sampling(chat(temperature=None, top_p=None, stop=None), DEFAULTS, 256)
    assert (params.temperature, params.top_p, params.stop) == (0.2, 0.9, ("###",))


def test_fields_the_request_gives_win() -> None:
    params = sampling(chat(temperature=1.0, top_p=1.0, stop="\n", seed=3), DEFAULTS, 9)
    assert (params.temperature, params.top_p, params.stop) == (1.0, 1.0, ("\n",))
    assert (params.max_tokens, params.seed) == (9, 3)
    # Zero is given, not left out; an empty list clears the model's stop sequences.
    params = sampling(chat(temperature=0, stop=[]), DEFAULTS, 9)
    assert (params.temperature, params.stop) == (0.0, ())


# The answer's lead ------------------------------------------------------------


class Pieces:
    """A decoder whose tokens are the given strings."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, token_ids: list[int], *, skip_special_tokens: bool) -> str:
        return "".join(self.pieces[t] for t in token_ids)


def detokenize(pieces: list[str], *, stop: tuple[str, ...] = (), lead: str = "") -> list[str]:
    """The deltas shown for each token, then the flushed rest."""
    detokenizer = IncrementalDetokenizer(Pieces(pieces), stop, lead)
    shown = [detokenizer.add(token) for token in range(len(pieces))]
    return [*shown, detokenizer.flush()]


def test_exactly_one_leading_space_is_dropped() -> None:
    assert "".join(detokenize([" The", " end"], lead=" ")) == "The end"
    assert "".join(detokenize(["  indented"], lead=" ")) == " indented"
    # A lone space may still be the lead: nothing is shown until it is known.
    assert detokenize([" ", "Paris", "."], lead=" ") == ["", "Paris", ".", ""]
    # An answer without it is shown as it is.
    assert "".join(detokenize(["Paris", " it is"], lead=" ")) == "Paris it is"
    assert detokenize([" "], lead=" ") == ["", ""]


def test_a_turn_marker_ends_the_answer_after_the_lead() -> None:
    markers = ("\nUser:", "\nAssistant:")
    shown = detokenize([" Paris", ".", "\n", "User", ":", " more"], stop=markers, lead=" ")
    assert "".join(shown) == "Paris."
    # The marker right away is an empty answer, not a space.
    assert "".join(detokenize([" \n", "User:"], stop=markers, lead=" ")) == ""


# On the real models -----------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app serving both real models from this process (a fixed router: no MiniLM)."""
    tmp_path = tmp_path_factory.mktemp("defaults")
    with app_client("sqlite+memory", tmp_path) as test_client:
        services = test_client.app.state.services  # type: ignore[attr-defined]
        runtime = ModelRuntime(services, router=DefaultModelRouter(SMOL))
        test_client.app.state.runtime = runtime  # type: ignore[attr-defined]
        runtime.start()
        try:
            assert runtime.loaded.wait(timeout=180), runtime.load_error
            yield test_client
        finally:
            runtime.stop()


@pytest.fixture(scope="module")
def user(client: TestClient) -> dict[str, str]:
    response = client.post("/admin/users", json={"name": "defaults"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return bearer(response.json()["api_key"])


def logged_request(client: TestClient, response_id: str) -> dict[str, Any]:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.database.session() as session:
        logged: dict[str, Any] = session.scalars(
            select(Response.request).where(Response.id == response_id)
        ).one()
        return logged


@pytest.mark.slow
@pytest.mark.models
def test_a_base_models_chat_stops_at_the_next_turn_without_a_leading_space(
    client: TestClient, user: dict[str, str]
) -> None:
    body = {"model": GEMMA, "messages": FRANCE, "temperature": 0, "max_tokens": 64}
    response = client.post("/v1/chat/completions", json=body, headers=user)
    assert response.status_code == 200, response.text
    answer = response.json()
    text = answer["choices"][0]["message"]["content"]
    # Left to itself, gemma goes on with "\nUser: What is the capital..." to max_tokens.
    assert text == "The capital of France is Paris."
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] < 64

    streamed = client.post("/v1/chat/completions", json={**body, "stream": True}, headers=user)
    pieces = [
        chunk["choices"][0]["delta"].get("content") or ""
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
        for chunk in [json.loads(line.removeprefix("data: "))]
        if chunk.get("choices")
    ]
    assert "".join(pieces) == text
    assert not pieces[1].startswith(" ")  # pieces[0] is the role's chunk

    # A completion is the caller's own text: no turns, no lead dropped.
    prompt = {"model": GEMMA, "prompt": "User: Hi\nAssistant:", "temperature": 0, "max_tokens": 8}
    completion = client.post("/v1/completions", json=prompt, headers=user).json()
    assert completion["choices"][0]["text"].startswith(" ")


@pytest.mark.slow
@pytest.mark.models
def test_smollm_answers_sensibly_with_its_defaults(
    client: TestClient, user: dict[str, str]
) -> None:
    body = {"model": SMOL, "messages": FRANCE, "seed": 1}
    response = client.post("/v1/chat/completions", json=body, headers=user)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "Paris" in answer["choices"][0]["message"]["content"]
    logged = logged_request(client, answer["id"])
    assert (logged["temperature"], logged["top_p"]) == (BUILT_IN.temperature, BUILT_IN.top_p)
    assert logged["max_tokens"] == BUILT_IN.max_tokens


@pytest.mark.slow
@pytest.mark.models
def test_models_report_the_context_length_the_server_enforces(
    client: TestClient, user: dict[str, str]
) -> None:
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    listed = client.get("/v1/models", headers=user).json()["data"]
    context = {entry["id"]: entry["context_length"] for entry in listed}
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    for model_id in (SMOL, GEMMA):
        assert context[model_id] == runtime.models[model_id].context_length
    # Both models take more than the cap (8192 and 32768 of their own).
    assert context[SMOL] == context[GEMMA] == settings.engine.max_context_tokens

    # A request the reported length does not hold is refused.
    words = "word " * (settings.engine.max_context_tokens - 40)
    too_long = {"model": SMOL, "prompt": words, "max_tokens": 64}
    response = client.post("/v1/completions", json=too_long, headers=user)
    assert response.status_code == 400 and "context_length" in response.text

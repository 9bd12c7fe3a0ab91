"""Bringing your own base model: ``tailor models add`` / ``remove`` and ``/admin/models``.

Every family of ``models.architectures`` is built here as a tiny random model
(``tests/tiny_models.py``), added through the CLI, and answers a chat through the real
app with a user's LoRA adapter in the engine's slots; its multi-LoRA layers compute
what peft computes. The admin API adds a model that the running process serves at once
and removes it again. Bad input (pickles, unsupported architectures, no config, bad or
taken names, a GGUF of another architecture) is refused by both with the reason, and
nothing is stored. SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from sqlalchemy import select
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner, Result

from adapters.base_shapes import BaseModelShapes
from adapters.device.multi_lora import MultiLoraModel
from adapters.lora_weights import TARGET_MODULES
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from models.architectures import SUPPORTED_MODEL_TYPES
from models.store.prepare import MANIFEST_NAME
from models.store.query_encoder import QUERY_ENCODER_DIR
from router import DefaultModelRouter
from serving import cli
from serving.runtime import ModelRuntime
from storage.tables import Adapter, BaseModelRow
from tests.adapter_factory import random_lora
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer, new_user
from tests.server import prepared_model_store, run_tailor, running_server
from tests.tiny_models import FAMILIES, build_tiny_model, write_config

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# Helpers ---------------------------------------------------------------------------------


def store_of(client: TestClient) -> Path:
    store: Path = client.app.state.services.settings.storage.model_store_dir  # type: ignore[attr-defined]
    return store


def cli_add(client: TestClient, name: str, source: Path, *options: str) -> Result:
    """``tailor models add`` against the app's own database and model store."""
    return _cli(client, ["models", "add", name, "--from", str(source), *options])


def cli_remove(client: TestClient, name: str, *options: str) -> Result:
    return _cli(client, ["models", "remove", name, *options])


def _cli(client: TestClient, args: list[str]) -> Result:
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    env = {
        "TAILOR_DATA_DIR": str(settings.storage.data_dir),
        "TAILOR_MODEL_STORE": str(settings.storage.model_store_dir),
        "TAILOR_DATABASE_URL": settings.storage.resolved_database_url,
        # The CLI's own check runs a small engine; its defaults would reserve more.
        "TAILOR_ADAPTER_SLOTS": "2",
        "TAILOR_MAX_BATCH": "2",
    }
    return CliRunner().invoke(cli.app, args, env=env)


@contextmanager
def serving(client: TestClient) -> Iterator[ModelRuntime]:
    """The app's runtime with local engines over the registered models (a fixed router:
    no MiniLM, which a fresh store lacks)."""
    services = client.app.state.services  # type: ignore[attr-defined]
    runtime = ModelRuntime(services, router=DefaultModelRouter(None))
    client.app.state.runtime = runtime  # type: ignore[attr-defined]
    runtime.start()
    try:
        assert runtime.loaded.wait(timeout=120), runtime.load_error
        yield runtime
    finally:
        runtime.stop()


def upload_adapter(
    client: TestClient, tmp_path: Path, *, user_id: str, model: str
) -> dict[str, Any]:
    """A random LoRA on every projection of ``model``, uploaded as PEFT files and promoted."""
    shapes = BaseModelShapes.from_model_dir(store_of(client) / model)
    lora = random_lora(
        shapes, base_model_id=model, rank=4, target_modules=shapes.target_modules, scale=0.2
    )
    folder = tmp_path / f"peft-{model}"
    export_peft_dir(lora, folder)
    files = [
        ("file", (name, io.BytesIO((folder / name).read_bytes())))
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    ]
    response = client.post(
        "/admin/adapters",
        data={"user_id": user_id, "base_model": model},
        files=files,
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    version: dict[str, Any] = response.json()
    promoted = client.post(f"/admin/adapters/{version['id']}/promote", headers=ADMIN)
    assert promoted.status_code == 200, promoted.text
    return version


def chat(client: TestClient, key: dict[str, str], model: str, **fields: Any) -> Any:
    body = {"model": model, "messages": QUESTION, **fields}
    return client.post("/v1/chat/completions", json=body, headers=key)


def admin_entry(client: TestClient, model: str) -> dict[str, Any] | None:
    listed = client.get("/admin/models", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    return next((m for m in listed.json()["data"] if m["id"] == model), None)


def row_of(client: TestClient, model: str) -> BaseModelRow | None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.database.session() as session:
        row: BaseModelRow | None = session.get(BaseModelRow, model)
        if row is not None:
            session.expunge(row)
        return row


def store_listing(client: TestClient) -> list[str]:
    store = store_of(client)
    return (
        sorted(p.name for p in store.iterdir() if not p.name.endswith(".lock"))
        if store.is_dir()
        else []
    )


# Every family, end to end -----------------------------------------------------------------


def test_every_supported_family_has_a_tiny_model_here() -> None:
    # A family joins models.architectures only together with its model here, so that
    # the tests below run it through the engine and the multi-LoRA layers.
    assert sorted(FAMILIES) == sorted(SUPPORTED_MODEL_TYPES)


# Each family builds, stores, checks and serves a model: `make test`, not `make check`.
@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_family_added_with_the_cli_answers_a_chat_with_a_users_adapter(
    model_type: str, tmp_path: Path
) -> None:
    source = build_tiny_model(model_type, tmp_path / "source")
    assert (source / "model.safetensors").is_file() and not list(source.glob("*.bin"))
    name = "tiny-" + model_type.replace("_", "-")
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        added = cli_add(
            client, name, source, "--price", "0.25", "--temperature", "0", "--max-tokens", "5"
        )
        assert added.exit_code == 0, added.output
        assert f"tailor: added {name} ({model_type}" in added.output

        stored = json.loads((store_of(client) / name / "generation_config.json").read_text())
        assert stored["temperature"] == 0 and stored["do_sample"] is False
        assert stored["max_new_tokens"] == 5
        entry = admin_entry(client, name)
        assert entry is not None
        assert (entry["architecture"], entry["context_length"], entry["chat"]) == (
            model_type,
            512,
            True,
        )
        assert entry["cost_per_million_tokens"] == 0.25  # --price, not the size rule
        assert 0 < entry["parameters"] < 100_000

        with serving(client) as runtime:
            assert runtime.models[name].generation_defaults.temperature == 0.0
            user_id, key = new_user(client, "ada")
            version = upload_adapter(client, tmp_path, user_id=user_id, model=name)
            personal = chat(client, key, name)
            assert personal.status_code == 200, personal.text
            answer = personal.json()
            assert answer["model"] == name
            assert isinstance(answer["choices"][0]["message"]["content"], str)
            assert answer["usage"]["completion_tokens"] <= 5  # the stored max_tokens
            assert [a["version_id"] for a in answer["tailor"]["adapters"]] == [version["id"]]
            plain = chat(client, key, name, personalize=False)
            assert plain.status_code == 200, plain.text
            assert plain.json()["tailor"]["adapters"] == []
            # The adapter sat in a slot of this model's engine.
            assert runtime.local[name].slots.stats.loads >= 1


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_familys_multi_lora_layers_compute_what_peft_computes(
    model_type: str, tmp_path: Path
) -> None:
    source = build_tiny_model(model_type, tmp_path / "source")
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.train(False)
    shapes = BaseModelShapes.from_model_dir(source)
    assert shapes.model_type == model_type
    lora = random_lora(
        shapes, base_model_id="tiny", rank=4, target_modules=TARGET_MODULES, scale=0.3, seed=3
    )
    export_peft_dir(lora, tmp_path / "peft")
    ids = torch.randint(
        0, int(model.config.vocab_size), (3, 20), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        base = model(ids).logits
        reference = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "peft")(ids).logits
        handle = MultiLoraModel.wrap(model, num_slots=2, max_rank=8)
        handle.load(1, lora)
        with handle.routing([1, 0, 1]):
            got = model(ids).logits
    assert (reference - base).abs().max() > 1e-2  # the adapter changes the answer
    torch.testing.assert_close(got[0], reference[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[2], reference[2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], base[1])  # slot 0: no expert, the base model


# The admin API -----------------------------------------------------------------------------


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_the_admin_api_adds_a_model_that_is_served_at_once_and_removes_it(
    deployment: str, tmp_path: Path
) -> None:
    source = build_tiny_model("qwen3", tmp_path / "source")
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with app_client(deployment, tmp_path, real_models=False) as client, serving(client):
        _user, key = new_user(client, "ada")
        body = {
            "id": "my-qwen",
            "path": str(source),
            "price": 0.5,
            "context_length": 256,
            "chat_template": template,
            "top_p": 0.5,
        }
        response = client.post("/admin/models", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        added = response.json()
        assert added["served"] is True
        assert added["source"] == f"dir:{source.resolve()}"
        assert (added["architecture"], added["context_length"]) == ("qwen3", 256)
        assert added["cost_per_million_tokens"] == 0.5 and added["chat"] is True
        answered = chat(client, key, "my-qwen", temperature=0, max_tokens=6)
        assert answered.status_code == 200, answered.text
        assert answered.json()["model"] == "my-qwen"
        listed = client.get("/v1/models", headers=key).json()["data"]
        assert "my-qwen" in [m["id"] for m in listed]
        tokenizer_config = json.loads(
            (store_of(client) / "my-qwen" / "tokenizer_config.json").read_text()
        )
        stored_template = (
            tokenizer_config.get("chat_template")
            or (store_of(client) / "my-qwen" / "chat_template.jinja").read_text()
        )
        assert stored_template == template

        # The same name again is taken, whatever the source.
        again = client.post("/admin/models", json=body, headers=ADMIN)
        assert again.status_code == 409, again.text
        assert "my-qwen" in again.json()["error"]["message"]

        removed = client.delete("/admin/models/my-qwen", headers=ADMIN)
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"id": "my-qwen", "object": "model", "deleted": True}
        assert not (store_of(client) / "my-qwen").exists()
        assert admin_entry(client, "my-qwen") is None
        row = row_of(client, "my-qwen")
        assert row is not None and row.enabled is False  # kept for its responses
        gone = chat(client, key, "my-qwen", max_tokens=6)
        assert gone.status_code == 404, gone.text
        assert client.delete("/admin/models/my-qwen", headers=ADMIN).status_code == 404

        # Added again under the same name, it is enabled and served again.
        back = client.post("/admin/models", json={**body, "price": 0.75}, headers=ADMIN)
        assert back.status_code == 201, back.text
        assert back.json()["served"] is True and back.json()["cost_per_million_tokens"] == 0.75
        assert chat(client, key, "my-qwen", max_tokens=6).status_code == 200


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_removal_is_refused_while_adapters_or_jobs_exist_unless_forced(
    deployment: str, tmp_path: Path
) -> None:
    source = build_tiny_model("llama", tmp_path / "source")
    with app_client(deployment, tmp_path, real_models=False) as client:
        assert cli_add(client, "tiny", source).exit_code == 0
        user_id, _key = new_user(client, "ada")
        upload_adapter(client, tmp_path, user_id=user_id, model="tiny")

        refused = cli_remove(client, "tiny")
        assert refused.exit_code == 2
        assert refused.output.strip().splitlines()[-1] == (
            "tailor: error: tiny has 1 adapter(s); remove it with force to keep them unserved "
            "(they serve again if a model of this name is added)"
        )
        response = client.delete("/admin/models/tiny", headers=ADMIN)
        assert response.status_code == 409, response.text
        assert (store_of(client) / "tiny").is_dir() and row_of(client, "tiny").enabled  # type: ignore[union-attr]

        job = client.post("/admin/jobs", json={"model": "tiny"}, headers=ADMIN)
        assert job.status_code == 201, job.text
        forced = client.delete("/admin/models/tiny?force=true", headers=ADMIN)
        assert forced.status_code == 409
        assert "queued or running fine-tune job" in forced.json()["error"]["message"]
        cancelled = client.post(f"/admin/jobs/{job.json()['id']}/cancel", headers=ADMIN)
        assert cancelled.status_code == 200, cancelled.text

        assert cli_remove(client, "tiny", "--force").exit_code == 0
        assert not (store_of(client) / "tiny").exists()
        services = client.app.state.services  # type: ignore[attr-defined]
        with services.database.session() as session:
            kept = session.scalars(select(Adapter).where(Adapter.base_model_id == "tiny")).all()
        assert len(kept) == 1  # the user's adapter stays, unserved


def test_a_packaged_model_is_not_removed(tmp_path: Path) -> None:
    source = build_tiny_model("llama", tmp_path / "source")
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        assert cli_add(client, "tiny", source).exit_code == 0
        # As the store holds a packaged model: its manifest says it was not added.
        manifest_path = store_of(client) / "tiny" / MANIFEST_NAME
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({**manifest, "added": False}))
        response = client.delete("/admin/models/tiny", headers=ADMIN)
        assert response.status_code == 409
        assert "packaged model" in response.json()["error"]["message"]
        assert (store_of(client) / "tiny").is_dir() and row_of(client, "tiny").enabled  # type: ignore[union-attr]


# Bad input -------------------------------------------------------------------------------


def _pickled(tmp_path: Path) -> Path:
    source = build_tiny_model("llama", tmp_path / "pickled")
    (source / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    return source


def _no_config(tmp_path: Path) -> Path:
    source = build_tiny_model("llama", tmp_path / "no-config")
    (source / "config.json").unlink()
    return source


def _renamed_pickle(tmp_path: Path) -> Path:
    source = build_tiny_model("llama", tmp_path / "renamed")
    (source / "model.safetensors").write_bytes(b"\x80\x04\x95pickle bytes, never unpickled")
    return source


def _gpt2(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gpt2",
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 2},
    )


def _bert(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "bert",
        {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 32},
    )


def _classifier(tmp_path: Path) -> Path:
    source = build_tiny_model("llama", tmp_path / "classifier")
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (source / "config.json").write_text(json.dumps(config))
    return source


def _gguf_gpt2(tmp_path: Path) -> Path:
    from gguf import GGUFWriter

    path = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_block_count(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    return path


BAD_SOURCES = {
    "pickled weights": (_pickled, "holds pickled files (pytorch_model.bin)"),
    "a pickle named .safetensors": (_renamed_pickle, "pickle files are not accepted"),
    "no config": (_no_config, "has no config.json"),
    "a GPT-2 config": (_gpt2, "unsupported base model architecture 'gpt2'"),
    "a BERT config": (_bert, "unsupported base model architecture 'bert'"),
    "a classifier": (_classifier, "not a causal language model"),
    "a GGUF of GPT-2": (_gguf_gpt2, "holds a 'gpt2' model; supported GGUF architectures"),
    "a text file": (_not_a_model, "is neither a GGUF file nor a directory"),
}


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_bad_sources_are_refused_by_the_cli_and_the_api_and_nothing_is_stored(
    deployment: str, tmp_path: Path
) -> None:
    with app_client(deployment, tmp_path, real_models=False) as client:
        for label, (make, reason) in BAD_SOURCES.items():
            source = make(tmp_path)
            result = cli_add(client, "refused", source)
            assert result.exit_code == 2, (label, result.output)
            last = result.output.strip().splitlines()[-1]
            assert last.startswith("tailor: error: ") and reason in last, (label, last)
            assert "Traceback" not in result.output
            response = client.post(
                "/admin/models", json={"id": "refused", "path": str(source)}, headers=ADMIN
            )
            assert response.status_code == 422, (label, response.text)
            assert reason in response.json()["error"]["message"], label
            # Refused before the store is touched: not even a lock file.
            assert not store_of(client).exists(), label
            assert row_of(client, "refused") is None, label


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_bad_names_are_refused_by_the_cli_and_the_api(deployment: str, tmp_path: Path) -> None:
    source = build_tiny_model("llama", tmp_path / "source")
    with app_client(deployment, tmp_path, real_models=False) as client:
        assert cli_add(client, "taken", source).exit_code == 0
        cases = {
            "Tiny Model": (422, "is not a valid model id"),
            "ft:tiny": (422, "is not a valid model id"),
            "../outside": (422, "is not a valid model id"),
            "auto": (409, "'auto' is reserved"),
            "smollm2-135m-instruct": (409, "is reserved"),
            "taken": (409, "'taken' is already registered"),
        }
        for name, (status, reason) in cases.items():
            result = cli_add(client, name, source)
            assert result.exit_code == 2, (name, result.output)
            assert reason in result.output.strip().splitlines()[-1], (name, result.output)
            response = client.post(
                "/admin/models", json={"id": name, "path": str(source)}, headers=ADMIN
            )
            assert response.status_code == status, (name, response.text)
            assert reason in response.json()["error"]["message"], name
        assert store_listing(client) == ["taken"]
        relative = client.post("/admin/models", json={"id": "x", "path": "models/x"}, headers=ADMIN)
        assert relative.status_code == 422 and "absolute path" in relative.text
        too_long = cli_add(client, "tiny", source, "--context-length", "100000")
        assert too_long.exit_code == 2 and "more than the model's own 512" in too_long.output
        hot = cli_add(client, "tiny", source, "--temperature", "3")
        assert hot.exit_code == 2 and "the temperature must be from 0 to 2" in hot.output
        assert store_listing(client) == ["taken"]


# A GGUF file ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_gguf_file_is_converted_added_and_answers(tmp_path: Path) -> None:
    from models.store.packaged import SMOLLM2_135M_INSTRUCT

    gguf = SMOLLM2_135M_INSTRUCT.gguf_path(tmp_path)
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        added = cli_add(client, "my-smollm2", gguf, "--quiet")
        assert added.exit_code == 0, added.output
        row = row_of(client, "my-smollm2")
        assert row is not None and row.architecture == "llama" and row.source.startswith("gguf:")
        assert row.chat_template is not None
        with serving(client):
            _user, key = new_user(client, "ada")
            answer = chat(client, key, "my-smollm2", temperature=0, max_tokens=12)
            assert answer.status_code == 200, answer.text
            assert "Paris" in answer.json()["choices"][0]["message"]["content"]


# `tailor serve` ----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_tailor_serve_serves_a_model_added_with_the_cli(tmp_path: Path) -> None:
    """The installed command end to end: added, listed, served (by name and by `auto`,
    with the learning router), removed."""
    source = build_tiny_model("qwen2", tmp_path / "source")
    store = tmp_path / "models"
    store.mkdir()
    # The learning router's query encoder, read-only from the prepared store.
    (store / QUERY_ENCODER_DIR).symlink_to(prepared_model_store() / QUERY_ENCODER_DIR)
    env = {
        "TAILOR_DATA_DIR": str(tmp_path / "data"),
        "TAILOR_MODEL_STORE": str(store),
        "TAILOR_ADMIN_KEY": ADMIN["Authorization"].removeprefix("Bearer "),
        "TAILOR_ADAPTER_SLOTS": "2",
    }
    added = run_tailor(["models", "add", "tiny-qwen", "--from", str(source), "--price", "0.1"], env)
    assert added.returncode == 0, added.stderr + added.stdout
    listed = run_tailor(["models", "list"], env)
    assert listed.stdout.startswith("tiny-qwen\tqwen2\t"), listed.stdout
    assert "0.1000/1M tokens" in listed.stdout

    with running_server(env, timeout=120) as server:
        created = httpx.post(f"{server.url}/admin/users", json={"name": "ada"}, headers=ADMIN)
        key = bearer(created.json()["api_key"])
        models = httpx.get(f"{server.url}/v1/models", headers=key).json()["data"]
        assert [m["id"] for m in models] == ["tiny-qwen", "auto"]
        for model in ("tiny-qwen", "auto"):
            body = {"model": model, "messages": QUESTION, "max_tokens": 4, "temperature": 0}
            answer = httpx.post(
                f"{server.url}/v1/chat/completions", json=body, headers=key, timeout=60
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == "tiny-qwen"

    removed = run_tailor(["models", "remove", "tiny-qwen"], env)
    assert removed.returncode == 0, removed.stderr
    assert not (store / "tiny-qwen").exists()
    assert run_tailor(["models", "list"], env).stdout == ""

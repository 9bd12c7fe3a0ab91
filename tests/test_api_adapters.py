"""Adapters through the HTTP API: admin upload and lifecycle, users' own view."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from adapters.base_shapes import BaseModelShapes
from adapters.lora_weights import LoraWeights
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from adapters.validation import ValidationLimits
from tests.adapter_factory import random_lora
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, bearer
from tests.server import prepared_model_store

MODEL = "smollm2-135m-instruct"


@pytest.fixture(params=DEPLOYMENTS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path) as test_client:
        yield test_client


def weights(seed: int, rank: int = 4) -> LoraWeights:
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / MODEL)
    return random_lora(shapes, base_model_id=MODEL, seed=seed, rank=rank)


def peft_files(tmp_path: Path, lora: LoraWeights) -> dict[str, bytes]:
    directory = tmp_path / f"peft-{id(lora)}"
    export_peft_dir(lora, directory)
    return {
        ADAPTER_CONFIG: (directory / ADAPTER_CONFIG).read_bytes(),
        ADAPTER_WEIGHTS: (directory / ADAPTER_WEIGHTS).read_bytes(),
    }


def upload(
    client: TestClient, files: dict[str, bytes], user_id: str | None, **fields: str
) -> dict[str, object]:
    data = {"base_model": MODEL, **fields}
    if user_id is not None:
        data["user_id"] = user_id
    response = client.post(
        "/admin/adapters",
        data=data,
        files=[("file", (name, content)) for name, content in files.items()],
        headers=ADMIN,
    )
    body: dict[str, object] = {"status": response.status_code, **response.json()}
    return body


def new_user(client: TestClient, name: str) -> tuple[str, dict[str, str]]:
    body = client.post("/admin/users", json={"name": name}, headers=ADMIN).json()
    return body["id"], bearer(body["api_key"])


def test_upload_promote_rollback_download(client: TestClient, tmp_path: Path) -> None:
    ada, ada_key = new_user(client, "ada")
    _, bob_key = new_user(client, "bob")
    first = upload(client, peft_files(tmp_path, weights(1)), ada)
    assert first["status"] == 201 and first["state"] == "candidate" and first["version"] == 1
    adapter_id = first["adapter_id"]
    assert isinstance(adapter_id, str)

    promoted = client.post(f"/admin/adapters/{adapter_id}/promote", headers=ADMIN)
    assert promoted.status_code == 200 and promoted.json()["state"] == "active"

    mine = client.get("/v1/adapters", headers=ada_key).json()["data"]
    assert [(a["id"], a["kind"], a["version"], a["state"]) for a in mine] == [
        (adapter_id, "specialist", 1, "active")
    ]
    assert client.get("/v1/adapters", headers=bob_key).json()["data"] == []

    second = upload(client, peft_files(tmp_path, weights(2)), ada)
    client.post(f"/admin/adapters/{second['id']}/promote", headers=ADMIN)
    rolled = client.post(f"/admin/adapters/{adapter_id}/rollback", headers=ADMIN)
    assert rolled.status_code == 200 and rolled.json()["id"] == first["id"]
    again = client.post(f"/admin/adapters/{adapter_id}/rollback", headers=ADMIN)
    assert again.status_code == 409

    download = client.get(f"/admin/adapters/{adapter_id}/download", headers=ADMIN)
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert set(archive.namelist()) == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
        tensors = load_safetensors(archive.read(ADAPTER_WEIGHTS))
    original = weights(1)
    assert tensors.keys() == original.tensors.keys()
    assert all(torch.equal(tensors[k], original.tensors[k]) for k in tensors)

    listed = client.get(f"/admin/adapters?user_id={ada}", headers=ADMIN).json()["data"]
    (expert,) = listed
    assert [v["state"] for v in expert["versions"]] == ["active", "retired"]
    assert expert["versions"][1]["replaced_version_id"] == first["id"]

    retired = client.delete(f"/admin/adapters/{adapter_id}", headers=ADMIN)
    assert [v["state"] for v in retired.json()["data"]] == ["retired"]
    assert client.get("/v1/adapters", headers=ada_key).json()["data"][0]["state"] != "active"


def test_a_user_promotes_and_rolls_back_only_their_own_specialist(
    client: TestClient, tmp_path: Path
) -> None:
    ada, ada_key = new_user(client, "ada")
    bob, bob_key = new_user(client, "bob")
    first = upload(client, peft_files(tmp_path, weights(1)), ada)
    second = upload(client, peft_files(tmp_path, weights(2)), ada)
    theirs = upload(client, peft_files(tmp_path, weights(3)), bob)
    shared = upload(client, peft_files(tmp_path, weights(4)), None, kind="generalist")
    adapter_id = first["adapter_id"]

    # Another user's expert, or a generalist, does not exist for Ada; nothing changes.
    for other in (theirs["id"], theirs["adapter_id"], shared["id"], shared["adapter_id"]):
        assert client.post(f"/v1/adapters/{other}/promote", headers=ada_key).status_code == 404
        assert client.post(f"/v1/adapters/{other}/rollback", headers=ada_key).status_code == 404
    assert client.get("/v1/adapters", headers=bob_key).json()["data"][0]["state"] == "candidate"

    # Her expert's id promotes its newest candidate; a version id that very version.
    promoted = client.post(f"/v1/adapters/{adapter_id}/promote", headers=ada_key)
    assert promoted.status_code == 200 and promoted.json()["id"] == second["id"]
    assert promoted.json()["state"] == "active"
    older = client.post(f"/v1/adapters/{first['id']}/promote", headers=ada_key)
    assert older.status_code == 200 and older.json()["replaced_version_id"] == second["id"]
    again = client.post(f"/v1/adapters/{first['id']}/promote", headers=ada_key)
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"

    rolled = client.post(f"/v1/adapters/{adapter_id}/rollback", headers=ada_key)
    assert rolled.status_code == 200 and rolled.json()["id"] == second["id"]
    (mine,) = [
        a
        for a in client.get("/v1/adapters", headers=ada_key).json()["data"]
        if a["id"] == adapter_id
    ]
    assert mine["active_version_id"] == second["id"]
    assert client.post(f"/v1/adapters/{adapter_id}/rollback", headers=ada_key).status_code == 409
    assert bob != ada


def test_generalists_are_shared_with_every_user(client: TestClient, tmp_path: Path) -> None:
    _, ada_key = new_user(client, "ada")
    shared = upload(client, peft_files(tmp_path, weights(3)), None, kind="generalist")
    assert shared["status"] == 201
    kinds = [a["kind"] for a in client.get("/v1/adapters", headers=ada_key).json()["data"]]
    assert kinds == ["generalist"]


def test_bad_uploads_are_refused_with_the_reason_and_register_nothing(
    client: TestClient, tmp_path: Path
) -> None:
    ada, _ = new_user(client, "ada")
    good = peft_files(tmp_path, weights(1))

    class Trap:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("unpickled!",))

    cases: list[tuple[dict[str, bytes], dict[str, str], int, str]] = [
        (
            {ADAPTER_CONFIG: good[ADAPTER_CONFIG], "adapter_model.bin": pickle.dumps(Trap())},
            {},
            422,
            "pickle",
        ),
        (
            {ADAPTER_CONFIG: good[ADAPTER_CONFIG], ADAPTER_WEIGHTS: pickle.dumps(Trap())},
            {},
            422,
            "pickle",
        ),
        ({ADAPTER_CONFIG: good[ADAPTER_CONFIG]}, {}, 422, ADAPTER_WEIGHTS),
        ({**good, ADAPTER_WEIGHTS: good[ADAPTER_WEIGHTS][:-10]}, {}, 422, ""),
        (peft_files(tmp_path, weights(1, rank=128)), {}, 422, "rank"),
        (good, {"base_model": "gemma-3-270m"}, 422, "shape"),
        (good, {"base_model": "no-such-model"}, 422, "unknown base model"),
        (good, {"user_id": "usr_nobody"}, 404, ""),
        (good, {"kind": "generalist"}, 422, "no user"),
        (good, {"kind": "wizard"}, 422, "kind"),
    ]
    for files, fields, status, reason in cases:
        user_id = fields.pop("user_id", ada)
        body = upload(client, files, user_id, **fields)
        assert body["status"] == status, (fields, body)
        error = body["error"]
        assert isinstance(error, dict)
        assert reason.lower() in str(error["message"]).lower(), error
    assert client.get("/admin/adapters", headers=ADMIN).json()["data"] == []


def test_an_upload_over_the_size_cap_gets_413(client: TestClient, tmp_path: Path) -> None:
    ada, _ = new_user(client, "ada")
    services = client.app.state.services  # type: ignore[attr-defined]
    services.adapters.limits = ValidationLimits(max_file_bytes=1024)
    body = upload(client, peft_files(tmp_path, weights(1)), ada)
    assert body["status"] == 413


def test_lifecycle_errors_and_access(client: TestClient, tmp_path: Path) -> None:
    ada, ada_key = new_user(client, "ada")
    first = upload(client, peft_files(tmp_path, weights(1)), ada)
    assert client.post(f"/admin/adapters/{first['id']}/promote", headers=ADMIN).status_code == 200
    twice = client.post(f"/admin/adapters/{first['id']}/promote", headers=ADMIN)
    assert twice.status_code == 409 and "only a candidate" in twice.json()["error"]["message"]
    assert client.post("/admin/adapters/adv_nope/promote", headers=ADMIN).status_code == 404
    assert client.get("/admin/adapters", headers=ada_key).status_code == 403
    assert client.post(f"/admin/adapters/{first['id']}/promote", headers=ada_key).status_code == 403

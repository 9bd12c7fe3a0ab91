"""OpenAI's files and fine-tuning API, and fine-tuned models as model names, through the
HTTP API on both deployments (SQLite, PostgreSQL with Redis): every bad input refused
with its reason and nothing stored; another user's file, job or model a 404; a job's
``fine_tuned_model`` once its version is promoted (the worker's part played here by
the queue and the registry, as a worker calls them). One test drives the same routes
with the official ``openai.AsyncOpenAI`` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from finetune.queue import JobQueue
from storage.repositories import JobRepository
from storage.tables import AdapterKind, Decider, FineTuneJob, TrainingFile
from tests.app_client import ADMIN, DEPLOYMENTS, app_client, new_user, services
from tests.test_api_adapters import weights

MODEL = "smollm2-135m-instruct"


@pytest.fixture(params=DEPLOYMENTS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    with app_client(request.param, tmp_path) as test_client:
        yield test_client


def conversation(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]
    }


def jsonl(count: int) -> bytes:
    return "\n".join(json.dumps(conversation(i)) for i in range(count)).encode() + b"\n"


def upload(
    client: TestClient,
    headers: dict[str, str],
    content: bytes,
    name: str = "train.jsonl",
    **data: str,
) -> Any:
    return client.post(
        "/v1/files",
        files={"file": (name, content, "application/jsonl")},
        data={"purpose": "fine-tune", **data},
        headers=headers,
    )


def stored_files(client: TestClient) -> int:
    with services(client).database.session() as session:
        return session.scalar(select(func.count()).select_from(TrainingFile)) or 0


def stored_jobs(client: TestClient) -> int:
    with services(client).database.session() as session:
        return session.scalar(select(func.count()).select_from(FineTuneJob)) or 0


def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_file_is_stored_as_sent_listed_paged_and_only_its_owners(client: TestClient) -> None:
    _, ada = new_user(client, "ada")
    _, bob = new_user(client, "bob")
    content = b"\xef\xbb\xbf" + jsonl(12).replace(b"\n", b"\n\n", 1)  # a BOM and a blank line
    created = upload(client, ada, content, name="some/dir/train.jsonl")
    assert created.status_code == 201, created.text
    file = created.json()
    assert file["object"] == "file" and file["id"].startswith("file_")
    assert (file["bytes"], file["filename"], file["examples"]) == (len(content), "train.jsonl", 12)
    assert (file["purpose"], file["status"]) == ("fine-tune", "processed")
    # As sent, byte for byte.
    assert client.get(f"/v1/files/{file['id']}/content", headers=ada).content == content
    assert client.get(f"/v1/files/{file['id']}", headers=ada).json() == file

    second = upload(client, ada, jsonl(10), name="more.jsonl").json()
    listed = client.get("/v1/files", headers=ada).json()
    assert [f["id"] for f in listed["data"]] == [second["id"], file["id"]]  # newest first
    page = client.get("/v1/files", params={"limit": 1}, headers=ada).json()
    assert [f["id"] for f in page["data"]] == [second["id"]] and page["has_more"] is True
    rest = client.get("/v1/files", params={"after": second["id"]}, headers=ada).json()
    assert [f["id"] for f in rest["data"]] == [file["id"]] and rest["has_more"] is False
    oldest = client.get("/v1/files", params={"order": "asc", "limit": 1}, headers=ada).json()
    assert [f["id"] for f in oldest["data"]] == [file["id"]]

    # Another user's file is invisible: not listed, and a 404 on every route.
    assert client.get("/v1/files", headers=bob).json()["data"] == []
    for method, path in (
        ("GET", f"/v1/files/{file['id']}"),
        ("GET", f"/v1/files/{file['id']}/content"),
        ("DELETE", f"/v1/files/{file['id']}"),
    ):
        response = client.request(method, path, headers=bob)
        assert response.status_code == 404 and error_of(response)["code"] == "not_found", path
    assert client.get("/v1/files", params={"after": file["id"]}, headers=bob).status_code == 404

    deleted = client.delete(f"/v1/files/{file['id']}", headers=ada)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file['id']}", headers=ada).status_code == 404
    assert stored_files(client) == 1


def test_bad_files_are_refused_naming_their_bad_lines_and_nothing_is_stored(
    client: TestClient,
) -> None:
    _, ada = new_user(client, "ada")
    good = json.dumps(conversation(1))
    no_answer = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    extra_field = json.dumps({"messages": conversation(2)["messages"], "weight": 1})
    lines = [good, "{not json", good, no_answer, "", extra_field, json.dumps([1, 2])]
    response = upload(client, ada, "\n".join(lines).encode())
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_file"
    # Every bad line by its number (line 5 is blank, skipped), each one's reason too.
    assert "4 line(s)" in error["message"] and "lines 2, 4, 6, 7." in error["message"]
    assert "line 2: not JSON" in error["message"]
    assert "line 4: Value error, an example needs at least one assistant" in error["message"]
    assert "line 6: weight: Extra inputs are not permitted" in error["message"]

    for content, reason in (
        (b"", "empty"),
        (b"\n  \n\n", "empty"),
        (b"\xff\xfe" + jsonl(3), "not UTF-8"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "a\u0000b"},
                        {"role": "assistant", "content": "x"},
                    ]
                }
            ).encode(),
            "NUL",
        ),
    ):
        refused = upload(client, ada, content)
        assert refused.status_code == 422, content
        assert (
            error_of(refused)["code"] == "invalid_file" and reason in error_of(refused)["message"]
        )

    # The form itself: purpose and file required, only fine-tune files, nothing unknown.
    missing_purpose = client.post("/v1/files", files={"file": ("t.jsonl", jsonl(10))}, headers=ada)
    assert (
        missing_purpose.status_code == 422 and error_of(missing_purpose)["code"] == "invalid_body"
    )
    missing_file = client.post("/v1/files", data={"purpose": "fine-tune"}, headers=ada)
    assert (
        missing_file.status_code == 422 and "file is required" in error_of(missing_file)["message"]
    )
    for data, named in (
        ({"purpose": "batch"}, "purpose"),
        ({"expires_after[anchor]": "created_at"}, "expires_after"),
        ({"colour": "blue"}, "colour"),
    ):
        refused = upload(client, ada, jsonl(10), **data)
        assert refused.status_code == 400, data
        assert error_of(refused)["code"] == "unsupported_parameter"
        assert (
            error_of(refused)["message"].startswith(named) or named in error_of(refused)["message"]
        )
    too_long_name = upload(client, ada, jsonl(10), name="x" * 300 + ".jsonl")
    assert too_long_name.status_code == 422
    assert stored_files(client) == 0


def test_an_upload_over_the_file_limit_is_refused(client: TestClient) -> None:
    from serving.routes import files

    _, ada = new_user(client, "ada")
    line = json.dumps(conversation(1)).encode() + b"\n"
    content = line * (files.MAX_FILE_BYTES // len(line) + 1)
    response = upload(client, ada, content)
    assert response.status_code == 413 and error_of(response)["code"] == "too_large"
    assert stored_files(client) == 0


def job_body(training_file: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "training_file": training_file, **fields}


def test_bad_jobs_are_refused_with_the_field_named_and_nothing_is_queued(
    client: TestClient,
) -> None:
    _, ada = new_user(client, "ada")
    _, bob = new_user(client, "bob")
    mine = upload(client, ada, jsonl(12)).json()["id"]
    small = upload(client, ada, jsonl(9)).json()["id"]
    bobs = upload(client, bob, jsonl(12)).json()["id"]

    def refused(body: dict[str, Any], status: int, code: str, text: str) -> None:
        response = client.post("/v1/fine_tuning/jobs", json=body, headers=ada)
        assert response.status_code == status, (body, response.text)
        assert error_of(response)["code"] == code, (body, response.text)
        assert text in error_of(response)["message"], (body, response.text)

    refused(
        job_body(mine, hyperparameters={"n_epochs": 2, "warmup_steps": 3}),
        400,
        "unsupported_parameter",
        "hyperparameters.warmup_steps: unknown hyperparameter",
    )
    refused(
        job_body(
            mine, method={"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}
        ),
        400,
        "unsupported_parameter",
        "hyperparameters.beta",
    )
    refused(job_body(mine, method={"type": "dpo"}), 400, "unsupported_parameter", "method.type")
    refused(
        job_body(mine, integrations=[{"type": "wandb"}]),
        400,
        "unsupported_parameter",
        "integrations",
    )
    refused(job_body(mine, metadata={"team": "a"}), 400, "unsupported_parameter", "metadata")
    refused(job_body(mine, learning_rate=0.1), 400, "unsupported_parameter", "learning_rate")
    refused(job_body(mine, hyperparameters={"n_epochs": 0}), 422, "invalid_body", "n_epochs")
    refused(
        job_body(mine, hyperparameters={"batch_size": 32}),
        400,
        "invalid_hyperparameters",
        "batch_size",
    )
    refused(job_body(mine, suffix="has:colon"), 422, "invalid_body", "suffix")
    refused({"model": MODEL}, 422, "invalid_body", "training_file")
    refused(job_body(mine, model="gpt-9"), 404, "model_not_found", "gpt-9")
    # Another user's file is as unknown as a made-up one.
    refused(job_body(bobs), 404, "not_found", bobs)
    refused(job_body(mine, validation_file=bobs), 404, "not_found", bobs)
    refused(job_body("file_00000000000000000000"), 404, "not_found", "file_0000")
    refused(job_body(small), 422, "invalid_training_data", "at least 10")
    assert stored_jobs(client) == 0

    # Both places for the hyperparameters at once is refused too; either alone works.
    both = job_body(
        mine,
        hyperparameters={"n_epochs": 1},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    refused(both, 400, "unsupported_parameter", "method.supervised.hyperparameters")
    by_method = client.post(
        "/v1/fine_tuning/jobs",
        json=job_body(
            mine,
            method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
            metadata={},
        ),
        headers=ada,
    )
    assert by_method.status_code == 201, by_method.text
    assert by_method.json()["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": 4,
        "learning_rate_multiplier": "auto",
    }


def test_a_job_trains_on_its_file_and_the_file_stays_while_the_job_is_queued(
    client: TestClient,
) -> None:
    ada_id, ada = new_user(client, "ada")
    _, bob = new_user(client, "bob")
    training = upload(client, ada, jsonl(12)).json()["id"]
    validation = upload(client, ada, jsonl(3), name="valid.jsonl").json()["id"]
    body = job_body(
        training,
        validation_file=validation,
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 0.5},
        suffix="adder",
        seed=7,
    )
    created = client.post("/v1/fine_tuning/jobs", json=body, headers=ada)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert (job["training_file"], job["validation_file"], job["suffix"]) == (
        training,
        validation,
        "adder",
    )
    assert job["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": 2,
        "learning_rate_multiplier": 0.5,
    }
    assert (job["seed"], job["fine_tuned_model"], job["organization_id"]) == (7, None, ada_id)
    with services(client).database.session() as session:
        row = JobRepository(session).get(job_id=job["id"])
        # Tailor's names, as the worker's training plan reads them.
        assert row.hyperparameters == {
            "epochs": 3,
            "batch_size": 2,
            "learning_rate_multiplier": 0.5,
            "seed": 7,
        }
        assert (row.training_file_id, row.validation_file_id) == (training, validation)
    # The same job in Tailor's own shape.
    tailor = client.get(f"/v1/fine-tunes/{job['id']}", headers=ada).json()
    assert (tailor["training_file"], tailor["validation_file"]) == (training, validation)

    # Neither file can go while the job is queued.
    for file_id in (training, validation):
        in_use = client.delete(f"/v1/files/{file_id}", headers=ada)
        assert in_use.status_code == 409 and error_of(in_use)["code"] == "conflict"
        assert job["id"] in error_of(in_use)["message"]
    assert stored_files(client) == 2

    # Another user's job is a 404 everywhere.
    for method, path in (
        ("GET", f"/v1/fine_tuning/jobs/{job['id']}"),
        ("GET", f"/v1/fine_tuning/jobs/{job['id']}/events"),
        ("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel"),
    ):
        assert client.request(method, path, headers=bob).status_code == 404, path
    assert client.get("/v1/fine_tuning/jobs", headers=bob).json()["data"] == []

    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=ada)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=ada)
    assert again.status_code == 409
    assert client.delete(f"/v1/files/{training}", headers=ada).status_code == 200
    # A job keeps naming the file it trained on.
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=ada).json()["training_file"]
        == training
    )


def test_jobs_are_paged_newest_first_with_every_job_of_the_user(client: TestClient) -> None:
    _, ada = new_user(client, "ada")
    client.post(
        "/v1/examples", json={"examples": [conversation(i) for i in range(10)]}, headers=ada
    )
    native = client.post("/v1/fine-tunes", json={"model": MODEL}, headers=ada).json()
    training = upload(client, ada, jsonl(12)).json()["id"]
    ids = [native["id"]]
    for seed in (1, 2):
        created = client.post(
            "/v1/fine_tuning/jobs", json=job_body(training, seed=seed), headers=ada
        ).json()
        ids.append(created["id"])
    listed = client.get("/v1/fine_tuning/jobs", headers=ada).json()
    assert [j["id"] for j in listed["data"]] == ids[::-1] and listed["has_more"] is False
    # A job of /v1/fine-tunes learns from the user's data: no file.
    assert listed["data"][-1]["training_file"] is None
    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}, headers=ada).json()
    assert [j["id"] for j in first["data"]] == ids[:0:-1] and first["has_more"] is True
    rest = client.get(
        "/v1/fine_tuning/jobs", params={"after": first["data"][-1]["id"]}, headers=ada
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    missing = client.get("/v1/fine_tuning/jobs", params={"after": "ftjob_nope"}, headers=ada)
    assert missing.status_code == 404


def play_the_worker(
    client: TestClient, job_id: str, user_id: str, *, seed: int, promote: bool
) -> str:
    """What a worker does with a claimed job: events, a registered version, the
    gate's promotion (or not), the job's end. Returns the version id."""
    registry = services(client).adapters
    queue = JobQueue(registry.database)
    claim = queue.claim("test-worker")
    assert claim is not None and claim.job_id == job_id
    assert claim.training_file_id is not None
    queue.add_event(claim, "started", {"attempt": claim.attempt, "worker": claim.worker})
    queue.add_event(
        claim, "progress", {"step": 1, "total_steps": 2, "loss": 2.5, "validation_loss": None}
    )
    queue.add_event(claim, "trained", {"steps": 2, "tokens": 345})
    version = registry.register_candidate(
        weights(seed), kind=AdapterKind.SPECIALIST, user_id=user_id, job_id=job_id
    )
    queue.add_event(claim, "registered", {"version_id": version.id, "version": version.version})
    if promote:
        registry.promote(version_id=version.id, by=Decider.GATE)
        queue.add_event(claim, "promoted", {"version_id": version.id})
    else:
        queue.add_event(claim, "not_promoted", {"reasons": ["no gain"]})
    queue.succeed(
        claim,
        result_version_id=version.id,
        adapter_id=version.adapter_id,
        outcome="promoted" if promote else "held_back",
    )
    return str(version.id)


def test_a_promoted_version_is_the_jobs_fine_tuned_model_and_its_owners_alone(
    client: TestClient,
) -> None:
    ada_id, ada = new_user(client, "ada")
    _, bob = new_user(client, "bob")
    training = upload(client, ada, jsonl(12)).json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs", json=job_body(training, suffix="adder"), headers=ada
    ).json()
    version_id = play_the_worker(client, job["id"], ada_id, seed=1, promote=True)
    name = f"ft:{MODEL}:adder:{version_id}"

    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=ada).json()
    assert done["status"] == "succeeded" and done["fine_tuned_model"] == name
    assert done["trained_tokens"] == 345 and done["error"] is None
    assert (
        done["tailor"]["outcome"] == "promoted"
        and done["tailor"]["result_version_id"] == version_id
    )

    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=ada).json()
    messages = [e["message"] for e in events["data"]]
    assert messages[0] == f"New fine-tuned model created: {name}"  # newest first
    assert messages[-1].startswith("Fine-tuning job started")
    progress = next(e for e in events["data"] if e["type"] == "metrics")
    assert progress["data"]["train_loss"] == 2.5 and progress["level"] == "info"
    assert all(e["object"] == "fine_tuning.job.event" for e in events["data"])
    assert all(e["id"].startswith("ftevent_") for e in events["data"])
    page = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 2}, headers=ada
    ).json()
    assert page["has_more"] is True and [e["id"] for e in page["data"]] == [
        e["id"] for e in events["data"][:2]
    ]
    older = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events",
        params={"after": page["data"][-1]["id"]},
        headers=ada,
    ).json()
    assert [e["id"] for e in older["data"]] == [e["id"] for e in events["data"][2:]]
    bad_cursor = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": "yesterday"}, headers=ada
    )
    assert bad_cursor.status_code == 422 and error_of(bad_cursor)["code"] == "invalid_body"

    # The model is listed and retrieved for its owner, with its base model's figures.
    listed = client.get("/v1/models", headers=ada).json()["data"]
    entry = next(m for m in listed if m["id"] == name)
    base = next(m for m in listed if m["id"] == MODEL)
    assert entry["parent"] == MODEL and entry["owned_by"] == ada_id
    assert entry["context_length"] == base["context_length"]
    assert client.get(f"/v1/models/{name}", headers=ada).json() == entry
    # For anyone else it does not exist.
    assert name not in {m["id"] for m in client.get("/v1/models", headers=bob).json()["data"]}
    other = client.get(f"/v1/models/{name}", headers=bob)
    assert other.status_code == 404 and error_of(other)["code"] == "model_not_found"
    # Only its exact spelling names it.
    for wrong in (f"ft:{MODEL}:tailor:{version_id}", f"ft:{MODEL}:adder:adv_00000000000000000000"):
        assert client.get(f"/v1/models/{wrong}", headers=ada).status_code == 404

    # A fine-tuned model is no base for a job: the owner is told why, others get a 404.
    as_base = client.post("/v1/fine_tuning/jobs", json=job_body(training, model=name), headers=ada)
    assert as_base.status_code == 400 and error_of(as_base)["code"] == "unsupported_parameter"
    bob_file = upload(client, bob, jsonl(12)).json()["id"]
    others = client.post("/v1/fine_tuning/jobs", json=job_body(bob_file, model=name), headers=bob)
    assert others.status_code == 404 and error_of(others)["code"] == "model_not_found"

    # The same file and hyperparameters once more would train the same adapter.
    same = client.post("/v1/fine_tuning/jobs", json=job_body(training, suffix="x"), headers=ada)
    assert same.status_code == 422 and error_of(same)["code"] == "invalid_training_data"


def test_a_held_back_version_is_no_model_until_promoted_and_an_admins_retire_withdraws_it(
    client: TestClient,
) -> None:
    ada_id, ada = new_user(client, "ada")
    training = upload(client, ada, jsonl(12)).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", json=job_body(training), headers=ada).json()
    version_id = play_the_worker(client, job["id"], ada_id, seed=2, promote=False)
    held = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=ada).json()
    assert held["status"] == "succeeded" and held["fine_tuned_model"] is None
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=ada).json()["data"]
    assert events[0]["level"] == "warn" and "held back: no gain" in events[0]["message"]
    name = f"ft:{MODEL}:tailor:{version_id}"
    assert client.get(f"/v1/models/{name}", headers=ada).status_code == 404

    # The user chooses it anyway: now it is a model.
    promoted = client.post(f"/v1/adapters/{version_id}/promote", headers=ada)
    assert promoted.status_code == 200
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=ada).json()["fine_tuned_model"]
        == name
    )
    assert client.get(f"/v1/models/{name}", headers=ada).status_code == 200
    # An admin withdraws it.
    assert client.delete(f"/admin/adapters/{version_id}", headers=ADMIN).status_code == 200
    assert client.get(f"/v1/models/{name}", headers=ada).status_code == 404
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=ada).json()["fine_tuned_model"]
        is None
    )


def test_the_async_openai_client_drives_files_jobs_and_models(client: TestClient) -> None:
    ada_id, ada = new_user(client, "ada")
    _, bob = new_user(client, "bob")
    key = ada["Authorization"].removeprefix("Bearer ")
    bob_key = bob["Authorization"].removeprefix("Bearer ")
    app = client.app

    async def scenario() -> None:
        # The openai package's own HTTP client library, over the app in process.
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport) as http:
            sdk, bob_sdk = (
                openai.AsyncOpenAI(
                    base_url="http://tailor.test/v1", api_key=k, http_client=http, max_retries=0
                )
                for k in (key, bob_key)
            )
            uploaded = await sdk.files.create(file=("train.jsonl", jsonl(12)), purpose="fine-tune")
            assert uploaded.purpose == "fine-tune" and uploaded.bytes == len(jsonl(12))
            assert (await sdk.files.retrieve(uploaded.id)).filename == "train.jsonl"
            assert (await sdk.files.content(uploaded.id)).read() == jsonl(12)
            assert [f.id async for f in sdk.files.list()] == [uploaded.id]
            with pytest.raises(openai.UnprocessableEntityError, match="lines 1"):
                await sdk.files.create(file=("bad.jsonl", b"{}\n"), purpose="fine-tune")
            with pytest.raises(openai.NotFoundError):
                await bob_sdk.files.retrieve(uploaded.id)

            job = await sdk.fine_tuning.jobs.create(
                model=MODEL,
                training_file=uploaded.id,
                hyperparameters={"n_epochs": 2},
                suffix="async",
            )
            assert job.status == "queued" and job.hyperparameters.n_epochs == 2
            with pytest.raises(openai.BadRequestError, match=r"hyperparameters\.lora_alpha"):
                await sdk.fine_tuning.jobs.create(
                    model=MODEL,
                    training_file=uploaded.id,
                    hyperparameters={"lora_alpha": 16},  # type: ignore[arg-type]
                )
            with pytest.raises(openai.ConflictError):
                await sdk.files.delete(uploaded.id)
            with pytest.raises(openai.NotFoundError):
                await bob_sdk.fine_tuning.jobs.retrieve(job.id)

            version_id = await asyncio.to_thread(
                play_the_worker, client, job.id, ada_id, seed=3, promote=True
            )
            done = await sdk.fine_tuning.jobs.retrieve(job.id)
            assert done.status == "succeeded"
            assert done.fine_tuned_model == f"ft:{MODEL}:async:{version_id}"
            events = [e async for e in sdk.fine_tuning.jobs.list_events(job.id, limit=2)]
            assert events[0].message == f"New fine-tuned model created: {done.fine_tuned_model}"
            assert events[-1].message.startswith("Fine-tuning job started")  # paged to the end
            assert [j.id async for j in sdk.fine_tuning.jobs.list()] == [job.id]

            model = await sdk.models.retrieve(done.fine_tuned_model)
            assert model.id == done.fine_tuned_model and model.owned_by == ada_id
            with pytest.raises(openai.NotFoundError):
                await bob_sdk.models.retrieve(done.fine_tuned_model)
            assert (await sdk.files.delete(uploaded.id)).deleted is True

    asyncio.run(scenario())

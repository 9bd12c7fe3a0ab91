"""Tailor on Ray Serve (a local Ray on this CPU): the config and a real deployment."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI
from ray.serve.schema import ServeDeploySchema

from tests.adapter_upload import chat_personal_and_plain, upload_and_promote
from tests.server import RunningServer, prepared_model_store, run_tailor, running_server

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SMOL = "smollm2-135m-instruct"


@pytest.mark.slow
def test_the_serve_config_is_valid_for_ray_and_holds_no_secrets(tmp_path: Path) -> None:
    env = {
        "TAILOR_DATA_DIR": str(tmp_path),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY": ADMIN_KEY,
        "TAILOR_DEVICE": "cuda",
        "TAILOR_MAX_BATCH": "48",
    }
    result = run_tailor(["serve", "--print-config"], env)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    ServeDeploySchema.model_validate(config)  # Ray's own schema

    (application,) = config["applications"]
    assert application["import_path"] == "serving.ray_serve:build_app"
    deployments = {d["name"]: d for d in application["deployments"]}
    assert set(deployments) == {"TailorIngress", f"model-{SMOL}", "model-gemma-3-270m"}
    model = deployments[f"model-{SMOL}"]
    assert model["ray_actor_options"]["num_gpus"] == 1
    assert model["max_ongoing_requests"] == 48 and model["max_queued_requests"] == 256
    assert (
        model["autoscaling_config"]["max_replicas"] >= model["autoscaling_config"]["min_replicas"]
    )
    assert ADMIN_KEY not in result.stdout
    env_vars = application["runtime_env"]["env_vars"]
    assert "TAILOR_ADMIN_KEY" not in env_vars and "TAILOR_DATABASE_URL" not in env_vars
    assert json.loads(env_vars["TAILOR_MODELS"]) == [SMOL, "gemma-3-270m"]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "TAILOR_DATA_DIR": str(tmp_path_factory.mktemp("ray-data")),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY": ADMIN_KEY,
        "TAILOR_MODELS": json.dumps([SMOL]),
        "TAILOR_ADAPTER_SLOTS": "4",
        "TAILOR_MAX_ADAPTER_RANK": "8",
        # One fine-tune worker actor beside the Serve application.
        "TAILOR_FINETUNE_WORKERS": "1",
        "TAILOR_FINETUNE_DEVICE": "cpu",
        "TAILOR_FINETUNE_TRIGGER_NEW_EXAMPLES": "0",
    }
    try:
        with running_server(env, timeout=240, args=("serve", "--ray")) as server:
            yield server
    finally:
        # The server stops Ray on SIGTERM; this only sweeps up after a crash.
        ray_cli = str(Path(sys.executable).parent / "ray")
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, check=False)


@pytest.mark.e2e
@pytest.mark.ray
def test_chat_through_ray_serve_with_the_users_adapter(
    ray_server: RunningServer, tmp_path: Path
) -> None:
    created = httpx.post(f"{ray_server.url}/admin/users", json={"name": "ada"}, headers=ADMIN)
    user: dict[str, Any] = created.json()
    client = OpenAI(base_url=f"{ray_server.url}/v1", api_key=user["api_key"])
    answer = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
    )
    assert answer.model == SMOL
    assert answer.choices[0].message.content and "Paris" in answer.choices[0].message.content
    stream = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        answer.choices[0].message.content
    )

    # The user's adapter reaches the replica (the request is multiplexed by its expert set).
    version = upload_and_promote(
        ray_server.url, ADMIN, user_id=user["id"], base_model=SMOL, folder=tmp_path
    )
    personal, plain = chat_personal_and_plain(ray_server.url, user["api_key"], SMOL)
    assert [a["version_id"] for a in personal["tailor"]["adapters"]] == [version["id"]]
    assert personal["choices"][0]["message"]["content"] != plain["choices"][0]["message"]["content"]


@pytest.mark.e2e
@pytest.mark.ray
def test_a_fine_tune_worker_actor_runs_the_queued_jobs(ray_server: RunningServer) -> None:
    created = httpx.post(f"{ray_server.url}/admin/users", json={"name": "bo"}, headers=ADMIN)
    me = {"Authorization": f"Bearer {created.json()['api_key']}"}
    # Ten conversations pass the door's count, but each is longer than the model's 8,192
    # tokens: the actor claims the job, leaves them all out and fails it with the reason,
    # which shows the worker runs on Ray without training for minutes.
    examples = [
        {
            "messages": [
                {"role": "user", "content": f"Hi {i}. " + "word " * 9000},
                {"role": "assistant", "content": "Yo"},
            ]
        }
        for i in range(10)
    ]
    httpx.post(f"{ray_server.url}/v1/examples", json={"examples": examples}, headers=me)
    job = httpx.post(f"{ray_server.url}/v1/fine-tunes", json={"model": SMOL}, headers=me).json()
    deadline = time.monotonic() + 120
    while (state := httpx.get(f"{ray_server.url}/v1/fine-tunes/{job['id']}", headers=me).json())[
        "status"
    ] in ("queued", "running"):
        assert time.monotonic() < deadline, "no worker actor took the job"
        time.sleep(0.5)
    assert state["status"] == "failed" and "at least 10" in state["error"]
    assert "10 more were left out" in state["error"]


@pytest.mark.e2e
@pytest.mark.ray
def test_the_dashboard_is_served_through_ray_serve(ray_server: RunningServer) -> None:
    with httpx.Client(base_url=ray_server.url) as browser:
        signed_in = browser.post("/admin/login", data={"key": ADMIN_KEY})
        assert signed_in.status_code == 303
        page = browser.get("/admin/jobs", headers={"Accept": "text/html"})
        assert page.status_code == 200 and '<main id="app">' in page.text
        script = browser.get("/admin/static/pages/jobs.js")
        assert script.status_code == 200 and "loss" in script.text
        overview = browser.get("/admin/overview", headers={"Accept": "application/json"})
        assert overview.json()["bucket_seconds"] > 0

"""The whole loop with the official ``openai`` client only, against a real ``tailor serve``
and the fine-tune worker process it starts (issue #20): a training file uploaded with
``client.files.create``, a job with ``client.fine_tuning.jobs.create``, its events
followed with ``jobs.list_events`` until it ends, then a chat with the job's
``fine_tuned_model``, which answers in the file's style with exactly that version."""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from benchmarks.style_sets import STYLE_SETS
from tests.finetune_fixtures import MODEL
from tests.server import CPU_WORKER_SETTINGS, RunningServer, running_server, served_env

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# The style set the default training plan learns best (docs/benchmarks.md, style sets):
# the gate promotes it, so the job ends with a model to call.
STYLE = STYLE_SETS["json"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = served_env(tmp_path_factory.mktemp("data"), ADMIN_KEY, **CPU_WORKER_SETTINGS)
    with running_server(env, timeout=120) as running:
        yield running


def sdk_for(server: RunningServer, name: str) -> tuple[str, openai.OpenAI]:
    """A new user's id and an OpenAI client with their key (the admin API makes users)."""
    user = httpx.post(f"{server.url}/admin/users", json={"name": name}, headers=ADMIN).json()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=user["api_key"], max_retries=0)
    return user["id"], client


# One real job on a 2-core CPU: about 100 s alone, several minutes on a busy machine.
@pytest.mark.timeout(1800)
def test_the_openai_client_uploads_fine_tunes_follows_and_chats_with_the_model(
    server: RunningServer,
) -> None:
    user_id, client = sdk_for(server, "sdk-user")
    lines = "".join(json.dumps({"messages": list(c)}) + "\n" for c in STYLE.train)
    training = client.files.create(
        file=("style.jsonl", io.BytesIO(lines.encode())), purpose="fine-tune"
    )
    assert training.purpose == "fine-tune" and training.bytes == len(lines.encode())

    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training.id, suffix="json-style"
    )
    assert job.status == "queued" and job.training_file == training.id
    assert job.hyperparameters.n_epochs == "auto"

    # Follow the events as a user would: poll the newest page, keep the ones not seen yet.
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 1500
    while True:
        for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
            if event.id not in seen:
                seen[event.id] = event.message
                print(event.level, event.message)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"job {job.id} did not end: {job.status}"
        time.sleep(2)
    messages = list(seen.values())
    # The last page may have been read just before the job's last events: read it whole.
    everything = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert job.status == "succeeded", (job.error, everything)
    assert messages[0].startswith("Fine-tuning job started")
    # It learnt from the file, and from nothing else.
    dataset = next(m for m in everything if m.startswith("Training data"))
    assert f"Training data: {len(STYLE.train)} conversations" in dataset
    assert any(m.startswith("Step ") for m in everything)

    assert job.fine_tuned_model is not None, (job.model_extra, everything)
    version_id = job.model_extra["tailor"]["result_version_id"]  # type: ignore[index]
    assert job.fine_tuned_model == f"ft:{MODEL}:json-style:{version_id}"
    assert f"New fine-tuned model created: {job.fine_tuned_model}" in everything
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    assert client.models.retrieve(job.fine_tuned_model).owned_by == user_id

    answer = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": STYLE.held_out_prompts[1]}],
        max_tokens=96,
        temperature=0,
    )
    assert answer.model == job.fine_tuned_model
    used = answer.model_extra["tailor"]["adapters"]  # type: ignore[index]
    assert used[-1]["version_id"] == version_id and used[-1]["kind"] == "specialist"
    assert answer.model_extra["tailor"]["route"]["reason"] == "forced"  # type: ignore[index]
    text = answer.choices[0].message.content or ""
    assert STYLE.shows_style(text), text

    # Another user can neither see nor call it, nor touch the file.
    _, stranger = sdk_for(server, "stranger")
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        stranger.models.retrieve(job.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        stranger.files.delete(training.id)

    # The job has ended: its file may go, and the model stays callable.
    assert client.files.delete(training.id).deleted is True
    again = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[{"role": "user", "content": STYLE.held_out_prompts[1]}],
        max_tokens=96,
        temperature=0,
    )
    assert again.choices[0].message.content == text

"""The httpx snippets of docs/api.md run against a real server, so they cannot drift from the API.

docs/api.md shows Tailor's own routes, those the OpenAI SDK does not reach (feedback,
examples, routing preferences, fine-tunes, adapters, admin), as whole Python programs:
each is a fenced ``python`` block right after an HTML comment ``<!-- snippet: NAME -->``.
Here every marked block is taken from the page and executed as it stands against the
app of this process, served on a free port by uvicorn in a thread (an ``httpx.Client``
needs a real address, and the snippets are then run unchanged). Only the constants a
reader sets at a snippet's top (``BASE_URL``, the keys, ids, paths) are set to this
server's: their assignments are taken out and the test's values put in the snippet's
namespace. A request that fails raises from the snippet's ``raise_for_status()`` and
fails its test; each test then checks through the API that the snippet did what the
page says.

The server hosts a tiny random model added through the admin API (tests/tiny_models.py),
so that generating and adding a model take a fraction of a second, and a stand-in
worker writes a fine-tune job's events, so that no model is trained.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from adapters.base_shapes import BaseModelShapes
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from finetune.queue import ClaimedJob, JobQueue
from serving.runtime import ModelRuntime
from tests.adapter_factory import random_lora
from tests.app_client import ADMIN, ADMIN_KEY, app_client, bearer
from tests.server import free_port
from tests.test_router_eagle import TopicEmbedder
from tests.tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"
MARKER = re.compile(r"^<!-- snippet: ", re.MULTILINE)
SNIPPET = re.compile(
    r"^<!-- snippet: ([a-z0-9-]+) -->\n```python\n(.*?)^```", re.DOTALL | re.MULTILINE
)
# Every snippet the page marks; each is run by a test below.
SNIPPETS = {
    "errors",
    "feedback",
    "examples-json",
    "examples-jsonl",
    "routing",
    "fine-tune",
    "adapters",
    "promote-rollback",
    "admin-users",
    "admin-list-users",
    "admin-add-model",
    "admin-jobs",
    "admin-router",
}
# The methods of a snippet's ``client`` that send a request.
REQUEST_METHODS = {"get", "post", "patch", "put", "delete", "request"}
MODEL = "tiny-qwen"
PIRATE_EXAMPLES = ROOT / "examples" / "pirate_examples.jsonl"


# The snippets ------------------------------------------------------------------------------


def snippets() -> dict[str, str]:
    """Each marked snippet of docs/api.md by name."""
    text = API_DOC.read_text()
    found = SNIPPET.findall(text)
    names = [name for name, _ in found]
    # A marker whose block is not a ``python`` fence right below would go unrun.
    assert len(found) == len(MARKER.findall(text)), (
        "a snippet marker without a python block below it"
    )
    assert len(names) == len(set(names)), f"snippet names used twice: {names}"
    return dict(found)


def run_snippet(name: str, **constants: Any) -> str:
    """Executes snippet ``name`` with ``constants`` in place of its own; returns its output.

    Each of ``constants`` must be a name the snippet itself assigns at its top level, so
    that the snippet stays a whole program a reader only edits the values of."""
    source = snippets()[name]
    tree = ast.parse(source, filename=f"docs/api.md (snippet {name})")
    replaced = [statement for statement in tree.body if _assigned(statement) in constants]
    missing = set(constants) - {_assigned(statement) for statement in replaced}
    assert not missing, f"snippet {name} does not set {missing}"
    tree.body = [statement for statement in tree.body if statement not in replaced]
    namespace: dict[str, Any] = {"__name__": f"snippet_{name.replace('-', '_')}", **constants}
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            exec(compile(tree, f"<docs/api.md snippet {name}>", "exec"), namespace)
    except httpx.HTTPStatusError as error:
        # What the server said is the useful part: raise_for_status's message lacks it.
        pytest.fail(f"snippet {name}: {error}\n{error.response.text}\noutput:\n{output.getvalue()}")
    return output.getvalue()


def _assigned(statement: ast.stmt) -> str | None:
    """The name a statement such as ``API_KEY = "tlr_..."`` sets, else None."""
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return statement.targets[0].id
    return None


def test_every_marked_snippet_is_run_here() -> None:
    assert set(snippets()) == SNIPPETS


def test_the_links_to_the_snippets_sections_lead_to_headings() -> None:
    # Section 1.9 links each snippet's section by its heading's anchor, as GitHub makes
    # them: lower case, punctuation dropped, spaces as hyphens.
    text = API_DOC.read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.MULTILINE)
    }
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) > 10
    assert not [link for link in links if link not in anchors]


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_a_snippet_is_a_whole_program_that_checks_every_response(name: str) -> None:
    source = snippets()[name]
    tree = ast.parse(source)
    assert 'BASE_URL = "http://127.0.0.1:8000"' in source
    assert 'headers={"Authorization": f"Bearer {' in source
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    requests = [
        call
        for call in calls
        if isinstance(call.func, ast.Attribute)
        and call.func.attr in REQUEST_METHODS
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "client"
    ]
    checks = [
        call
        for call in calls
        if isinstance(call.func, ast.Attribute) and call.func.attr == "raise_for_status"
    ]
    assert requests, f"snippet {name} sends no request"
    # One check per request sent: an error answer must never pass unnoticed.
    assert len(checks) == len(requests), f"snippet {name}: {len(requests)} requests"


# The server --------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    client: TestClient  # the same app in process, for what the snippets do not show
    model_dir: Path  # the tiny model's source, on this machine as on the server

    def get(self, path: str, key: str = ADMIN_KEY, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=bearer(key))
        assert response.status_code == 200, response.text
        return response.json()

    def post(
        self, path: str, key: str = ADMIN_KEY, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        response = self.client.post(path, headers={**bearer(key), **(headers or {})}, **kwargs)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def new_user(self, name: str) -> tuple[str, str]:
        """A user and their key."""
        created = self.post("/admin/users", json={"name": name})
        return created["id"], created["api_key"]


@contextlib.contextmanager
def served_on_a_port(app: ASGIApp) -> Iterator[str]:
    """``app`` served by uvicorn in a thread until the block ends; yields its address.

    The lifespan stays off: the test client that made the app has run it."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="snippet-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app with local engines and the learning router (a stand-in embedder: the
    model store here holds no MiniLM), serving a tiny model added through the API."""
    tmp_path = tmp_path_factory.mktemp("snippets")
    model_dir = build_tiny_model("qwen3", tmp_path / "tiny-qwen")
    with app_client("sqlite+memory", tmp_path, real_models=False) as client:
        # Registered before the runtime starts: the learning router needs a model to route.
        added = client.post(
            "/admin/models", json={"id": MODEL, "path": str(model_dir)}, headers=ADMIN
        )
        assert added.status_code == 201, added.text
        services = client.app.state.services  # type: ignore[attr-defined]
        runtime = ModelRuntime(services, embedder=TopicEmbedder())
        client.app.state.runtime = runtime  # type: ignore[attr-defined]
        runtime.start()
        try:
            assert runtime.loaded.wait(timeout=60), runtime.load_error
            with served_on_a_port(client.app) as url:
                yield Server(url, client, model_dir)
        finally:
            runtime.stop()


def as_user(server: Server, key: str) -> dict[str, Any]:
    return {"BASE_URL": server.url, "API_KEY": key}


def as_admin(server: Server) -> dict[str, Any]:
    return {"BASE_URL": server.url, "ADMIN_KEY": ADMIN_KEY}


def upload_pirate_examples(server: Server, key: str) -> None:
    server.post(
        "/v1/examples",
        key,
        content=PIRATE_EXAMPLES.read_bytes(),
        headers={"Content-Type": "application/jsonl"},
    )


# Conventions -------------------------------------------------------------------------------


def test_the_errors_snippet_reads_the_code_of_an_error(server: Server) -> None:
    _, key = server.new_user("errors")
    output = run_snippet("errors", **as_user(server, key))
    assert output.startswith("404 not_found "), output


# The caller's own data ---------------------------------------------------------------------


def test_the_feedback_snippet_rates_a_fresh_answer(server: Server) -> None:
    user_id, key = server.new_user("feedback")
    output = run_snippet("feedback", **as_user(server, key))
    assert output.startswith("201 "), output
    assert server.get(f"/admin/users/{user_id}")["feedback_count"] == 1


def test_the_examples_snippets_store_json_and_json_lines(server: Server) -> None:
    user_id, key = server.new_user("examples")
    output = run_snippet("examples-json", **as_user(server, key))
    assert "'stored': 2" in output, output
    run_snippet("examples-jsonl", **as_user(server, key), EXAMPLES_FILE=PIRATE_EXAMPLES)
    lines = [line for line in PIRATE_EXAMPLES.read_text().splitlines() if line.strip()]
    assert server.get(f"/admin/users/{user_id}")["example_count"] == 2 + len(lines)


def test_the_routing_snippet_sets_a_price_ceiling(server: Server) -> None:
    _, key = server.new_user("routing")
    run_snippet("routing", **as_user(server, key))
    assert server.get("/v1/routing", key) == {
        "cost_weight": None,
        "max_price": 0.2,
        "latency_slo_seconds": None,
    }


class StandInWorker(threading.Thread):
    """Takes the next queued job as a fine-tune worker would and writes a few events,
    the snippet polling in between, then ends it as held back; nothing is trained."""

    def __init__(self, queue: JobQueue, user_id: str) -> None:
        super().__init__(name="stand-in-worker", daemon=True)
        self.queue, self.user_id = queue, user_id
        self.error: BaseException | None = None

    def run(self) -> None:
        claim: ClaimedJob | None = None
        try:
            deadline = time.monotonic() + 30
            while (claim := self.queue.claim("stand-in")) is None:
                assert time.monotonic() < deadline, "the snippet queued no job"
                time.sleep(0.02)
            assert claim.user_id == self.user_id, claim
            self.queue.add_event(claim, "started", {"attempt": claim.attempt, "worker": "stand-in"})
            time.sleep(0.1)
            self.queue.add_event(claim, "progress", {"step": 1, "total_steps": 1, "loss": 2.5})
            time.sleep(0.1)
            self.queue.succeed(
                claim, result_version_id=None, outcome="held_back", outcome_reason="stand-in"
            )
        except BaseException as error:
            self.error = error
            # Ended, the job lets the snippet's loop end too, rather than poll for ever.
            if claim is not None:
                self.queue.fail(claim, f"stand-in worker: {error}", retryable=False)


def test_the_fine_tune_snippet_follows_a_job_to_its_end(server: Server) -> None:
    user_id, key = server.new_user("fine-tune")
    upload_pirate_examples(server, key)
    services = server.client.app.state.services  # type: ignore[attr-defined]
    worker = StandInWorker(JobQueue(services.database), user_id)
    worker.start()
    output = run_snippet("fine-tune", **as_user(server, key), MODEL=MODEL, POLL_SECONDS=0.02)
    worker.join(timeout=30)
    assert worker.error is None, worker.error
    lines = output.splitlines()
    assert lines[0].startswith("queued ftjob_"), output
    assert [line.split()[0] for line in lines[1:]] == ["started", "progress", "succeeded"]
    assert lines[-1] == "succeeded held_back stand-in"


def upload_version(server: Server, tmp_path: Path, user_id: str, seed: int) -> dict[str, Any]:
    """A random LoRA for ``user_id``'s specialist on the tiny model, a new candidate."""
    store: Path = server.client.app.state.services.settings.storage.model_store_dir  # type: ignore[attr-defined]
    shapes = BaseModelShapes.from_model_dir(store / MODEL)
    lora = random_lora(
        shapes, base_model_id=MODEL, rank=4, target_modules=shapes.target_modules, seed=seed
    )
    folder = tmp_path / f"peft-{seed}"
    export_peft_dir(lora, folder)
    files = [
        ("file", (name, (folder / name).read_bytes())) for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    ]
    version: dict[str, Any] = server.post(
        "/admin/adapters", data={"user_id": user_id, "base_model": MODEL}, files=files
    )
    return version


def test_the_adapter_snippets_list_promote_and_roll_back(server: Server, tmp_path: Path) -> None:
    user_id, key = server.new_user("adapters")
    first = upload_version(server, tmp_path, user_id, seed=1)
    server.post(f"/admin/adapters/{first['id']}/promote")
    held_back = upload_version(server, tmp_path, user_id, seed=2)

    listed = run_snippet("adapters", **as_user(server, key))
    assert f"{first['adapter_id']} specialist {MODEL} {first['id']}" in listed, listed
    assert f"{held_back['id']} candidate None None" in listed, listed

    output = run_snippet("promote-rollback", **as_user(server, key), VERSION_ID=held_back["id"])
    assert output.splitlines() == [
        f"{held_back['id']} active replaced {first['id']}",
        f"{first['id']} active",
    ]
    [adapter] = server.get("/v1/adapters", key)["data"]
    assert adapter["active_version_id"] == first["id"]


# Admin -------------------------------------------------------------------------------------


def test_the_admin_users_snippet_makes_a_user_with_two_keys(server: Server) -> None:
    output = run_snippet("admin-users", **as_admin(server))
    [user] = [u for u in server.get("/admin/users", limit=1000)["data"] if u["name"] == "ada"]
    assert len(user["keys"]) == 2
    # Both secrets it shows are keys of the user's.
    for line in output.splitlines():
        secret = line.split()[1]
        assert server.get("/v1/routing", secret)["max_price"] is None


def test_the_admin_list_users_snippet_pages_through_every_user(server: Server) -> None:
    for name in ("page-1", "page-2", "page-3"):
        server.new_user(name)
    output = run_snippet("admin-list-users", **as_admin(server), PAGE_SIZE=2)
    users = server.get("/admin/users", limit=1000)["data"]
    assert [line.split()[0] for line in output.splitlines()] == [u["id"] for u in users]


def test_the_admin_add_model_snippet_adds_a_model_served_at_once(server: Server) -> None:
    output = run_snippet("admin-add-model", **as_admin(server), MODEL_PATH=str(server.model_dir))
    assert output.split()[:2] == ["my-qwen", "qwen3"], output
    assert output.split()[-1] == "True"
    _, key = server.new_user("add-model")
    assert "my-qwen" in [m["id"] for m in server.get("/v1/models", key)["data"]]


def test_the_admin_jobs_snippet_lists_the_queue(server: Server) -> None:
    user_id, key = server.new_user("jobs")
    upload_pirate_examples(server, key)
    job = server.post("/v1/fine-tunes", key, json={"model": MODEL})
    try:
        output = run_snippet("admin-jobs", **as_admin(server))
    finally:
        # No other test's stand-in worker may take it.
        server.post(f"/admin/jobs/{job['id']}/cancel")
    assert f"queued {job['id']} specialist:{user_id}:{MODEL} api 0" in output.splitlines()


def test_the_admin_router_snippet_shows_the_learning_router(server: Server) -> None:
    output = run_snippet("admin-router", **as_admin(server))
    assert output.startswith("eagle {"), output
    assert f"{MODEL} rating " in output, output

"""The real server SIGKILLed while an admin promotes versions, again and again.

Promotion swaps which version of an expert is active in one transaction. A
server killed at any moment must leave exactly one active version, and it
must be the last promotion the server acknowledged, or the one in flight when
it died (committed, but its answer never sent). Nothing acknowledged is lost,
and every version still points at weights that exist.
"""

from __future__ import annotations

import io
import json
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adapters.base_shapes import BaseModelShapes
from adapters.peft_interop import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_dir
from storage.blobs import DirectoryBlobStore
from storage.database import Database
from storage.repositories import AdapterRepository
from storage.tables import AdapterState
from tests.adapter_factory import random_lora
from tests.backends import REDIS_URL, postgres_schema
from tests.server import prepared_model_store, running_server, served_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "smollm2-135m-instruct"
KILLS = 2


@pytest.fixture(params=["sqlite+memory", "postgresql+redis"])
def server_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    # Only the model the adapters are for: each test starts four servers, and loading
    # Gemma too would add a third to every start.
    env = served_env(tmp_path, ADMIN_KEY, TAILOR_MODELS=json.dumps([MODEL]))
    if request.param == "sqlite+memory":
        yield {**env, "TAILOR_DATABASE_URL": f"sqlite:///{tmp_path / 'tailor.db'}"}
    else:
        with postgres_schema() as url:
            yield {
                **env,
                "TAILOR_DATABASE_URL": url,
                "TAILOR_REDIS_URL": REDIS_URL,
                "TAILOR_CACHE_PREFIX": f"tailor-fault-{secrets.token_hex(4)}:",
            }


def upload_version(http: httpx.Client, user_id: str, seed: int, folder: Path) -> dict[str, str]:
    shapes = BaseModelShapes.from_model_dir(prepared_model_store() / MODEL)
    export_peft_dir(random_lora(shapes, base_model_id=MODEL, rank=4, seed=seed), folder)
    files = [
        ("file", (name, io.BytesIO((folder / name).read_bytes())))
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
    ]
    answer = http.post(
        "/admin/adapters", data={"user_id": user_id, "base_model": MODEL}, files=files
    )
    assert answer.status_code == 201, answer.text
    version: dict[str, str] = answer.json()
    return version


@dataclass
class Promoter:
    """Uploads and promotes new versions until its server dies; remembers what was answered.

    Only a candidate can be promoted, so each turn brings a new one.
    """

    url: str
    user_id: str
    folder: Path
    seed: int
    acknowledged: str | None = None
    in_flight: str | None = None
    promotions: int = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=ADMIN, timeout=10) as http:
            while True:
                self.seed += 1
                try:
                    version_id = upload_version(http, self.user_id, self.seed, self.folder)["id"]
                    self.in_flight = version_id
                    answer = http.post(f"/admin/adapters/{version_id}/promote")
                except httpx.TransportError:
                    return  # the server died mid-request
                assert answer.status_code == 200, answer.text
                self.acknowledged, self.in_flight = version_id, None
                self.promotions += 1


def versions_by_state(database_url: str, adapter_id: str) -> dict[AdapterState, list[str]]:
    database = Database(database_url)
    found: dict[AdapterState, list[str]] = {}
    try:
        with database.session() as session:
            for version in AdapterRepository(session).list_versions(adapter_id=adapter_id):
                found.setdefault(version.state, []).append(version.id)
                assert version.sha256 is not None
    finally:
        database.dispose()
    return found


def test_a_server_killed_mid_promotion_keeps_every_acknowledged_promotion(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    database_url = server_env["TAILOR_DATABASE_URL"]
    with (
        running_server(server_env) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http,
    ):
        created = http.post("/admin/users", json={"name": "ada"})
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        first = upload_version(http, user_id, 0, tmp_path / "peft")
        assert http.post(f"/admin/adapters/{first['id']}/promote").status_code == 200
    adapter_id = first["adapter_id"]

    chance = random.Random(15)
    seed = 0
    for _ in range(KILLS):
        with running_server(server_env) as server:
            promoter = Promoter(server.url, user_id, tmp_path / "peft", seed)
            thread = threading.Thread(target=promoter.run)
            thread.start()
            # Let a few promotions through (at least one, however loaded the machine),
            # then kill at a point of no one's choosing.
            deadline = time.monotonic() + 60
            while promoter.promotions == 0 and time.monotonic() < deadline:
                threading.Event().wait(0.05)
            threading.Event().wait(chance.uniform(0.5, 2.0))
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
            thread.join(timeout=30)
            assert not thread.is_alive()
        seed = promoter.seed
        assert promoter.promotions > 0, "no promotion finished before the kill"
        states = versions_by_state(database_url, adapter_id)
        [active] = states[AdapterState.ACTIVE]
        print(
            f"kill: {promoter.promotions} promotions acknowledged; active is the "
            f"{'last acknowledged' if active == promoter.acknowledged else 'in-flight'} one"
        )
        assert active in {promoter.acknowledged, promoter.in_flight}

    # Every version still has its weights, and a restarted server is ready.
    blobs = DirectoryBlobStore(Path(server_env["TAILOR_DATA_DIR"]) / "blobs")
    database = Database(database_url)
    try:
        with database.session() as session:
            versions = AdapterRepository(session).list_versions(adapter_id=adapter_id)
            assert len(versions) > KILLS
            for version in versions:
                assert version.sha256 is not None and blobs.exists(version.sha256)
    finally:
        database.dispose()
    with running_server(server_env) as server:
        assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"

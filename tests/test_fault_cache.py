"""The real server while its Redis is flushed, stopped and started again.

Redis holds copies (adapter hot copies, routing state, rate-limit buckets),
never the only record of anything: SQL does. So a flush must go unnoticed
by users, an outage may slow requests down or answer 503 with Retry-After
but never 500, the service must recover on its own when Redis is back, and
every example the server acknowledged must be in SQL at the end.

The Redis here is a private ``redis-server`` on a free port: the machine's
shared one is never flushed or stopped.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.adapter_upload import upload_and_promote
from tests.backends import postgres_schema
from tests.private_redis import PrivateRedis, private_redis_server
from tests.server import running_server, served_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

ADMIN_KEY = "admin-" + secrets.token_hex(8)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = "smollm2-135m-instruct"
REQUESTS_PER_PHASE = 6


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis_server(tmp_path) as server:
        yield server


class Traffic:
    """One user's chats and example uploads; counts every answer by status."""

    def __init__(self, http: httpx.Client, user_key: str) -> None:
        self.http = http
        self.user = {"Authorization": f"Bearer {user_key}"}
        self.statuses: Counter[int] = Counter()
        self.examples_acknowledged = 0

    def run(self, requests: int) -> Counter[int]:
        phase: Counter[int] = Counter()
        for index in range(requests):
            chat = self.http.post(
                "/v1/chat/completions",
                headers=self.user,
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Say {index}."}],
                    "max_tokens": 3,
                    "temperature": 0,
                },
            )
            example = self.http.post(
                "/v1/examples",
                headers=self.user,
                json={
                    "examples": [
                        {
                            "messages": [
                                {"role": "user", "content": f"question {index}"},
                                {"role": "assistant", "content": f"answer {index}"},
                            ]
                        }
                    ]
                },
            )
            for answer in (chat, example):
                phase[answer.status_code] += 1
                if answer.status_code == 503:
                    assert "Retry-After" in answer.headers, answer.text
            if example.status_code == 201:
                self.examples_acknowledged += 1
        self.statuses.update(phase)
        return phase


def test_a_flushed_then_stopped_redis_costs_no_data_and_no_server_error(
    redis: PrivateRedis, tmp_path: Path
) -> None:
    with postgres_schema() as database_url:
        env = {
            **served_env(tmp_path, ADMIN_KEY),
            "TAILOR_DATABASE_URL": database_url,
            "TAILOR_REDIS_URL": redis.url,
        }
        with (
            running_server(env) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
        ):
            created = http.post("/admin/users", json={"name": "ada"}, headers=ADMIN).json()
            upload_and_promote(
                server.url, ADMIN, user_id=created["id"], base_model=MODEL, folder=tmp_path / "p"
            )
            traffic = Traffic(http, created["api_key"])
            assert set(traffic.run(REQUESTS_PER_PHASE)) == {200, 201}

            # A flush loses copies only: nobody notices.
            redis.flush()
            assert set(traffic.run(REQUESTS_PER_PHASE)) == {200, 201}

            # Redis down: slower, or 503 with Retry-After, never a server error.
            redis.stop()
            down = traffic.run(REQUESTS_PER_PHASE)
            assert set(down) <= {200, 201, 503}, down
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["cache"] != "ok"

            # Back up: the service recovers without a restart.
            redis.start()
            deadline = time.monotonic() + 30
            while set(traffic.run(1)) != {200, 201}:
                assert time.monotonic() < deadline, "the service did not recover"
            assert http.get("/readyz").json()["status"] == "ready"

            examples = http.get("/v1/examples", headers=traffic.user, params={"limit": 1})
            stored = examples.json()["total"]
            print(
                f"redis flush+stop+start: {sum(traffic.statuses.values())} requests, "
                f"statuses {dict(sorted(traffic.statuses.items()))}, "
                f"examples acknowledged {traffic.examples_acknowledged}, stored {stored}"
            )
            assert stored == traffic.examples_acknowledged
    assert not {status for status in traffic.statuses if status >= 500} - {503}

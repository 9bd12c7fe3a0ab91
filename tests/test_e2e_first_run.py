"""What a user meets on `make run`: a quiet start that says "ready" only when it is."""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.server import TAILOR, free_port, prepared_model_store, run_tailor, tailor_env

pytestmark = pytest.mark.e2e


def test_quiet_serve_says_ready_once_it_answers_and_logs_the_rest(tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text(secrets.token_urlsafe(16) + "\n")
    port = free_port()
    env = {
        "TAILOR_DATA_DIR": str(tmp_path / "data"),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY_FILE": str(key_file),
        "TAILOR_PORT": str(port),
        "TAILOR_FINETUNE_WORKERS": "0",
    }
    process = subprocess.Popen(
        [TAILOR, "serve", "--quiet"],
        env=tailor_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("tailor: ready:"):
                break
        else:
            pytest.fail(f"tailor serve exited without saying ready:\n{lines}")
        # Ready means ready: the very next request finds the models loaded.
        url = f"http://127.0.0.1:{port}"
        readiness = httpx.get(f"{url}/readyz", timeout=10)
        assert readiness.status_code == 200, readiness.text
        assert readiness.json()["status"] == "ready"
        admin = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
        assert httpx.get(f"{url}/admin/users", headers=admin, timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert all(line.startswith("tailor: ") for line in lines), lines
    ready = lines[-1]
    assert f"http://127.0.0.1:{port}" in ready and f"admin key in {key_file}" in ready
    log = tmp_path / "data" / "log" / "tailor.log"
    assert str(log) in ready
    # Uvicorn's and the model host's lines went to the log, not the terminal.
    logged = log.read_text()
    assert "Application startup complete" in logged and "loaded on cpu" in logged


def test_a_busy_port_fails_at_once_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_tailor(
            ["serve"],
            {
                "TAILOR_DATA_DIR": str(tmp_path),
                "TAILOR_MODEL_STORE": str(prepared_model_store()),
                "TAILOR_PORT": str(port),
                "TAILOR_FINETUNE_WORKERS": "1",
            },
        )
        print(f"busy port to exit: {time.monotonic() - started:.2f} s")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tailor: error: TAILOR_PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    # Nothing was started: no worker, no database, no model announced.
    assert "starting" not in result.stdout and "worker" not in result.stdout + result.stderr
    assert not (tmp_path / "tailor.db").exists()


def test_a_missing_admin_key_file_stops_the_server_with_its_variable(tmp_path: Path) -> None:
    result = run_tailor(
        ["serve", "--quiet"],
        {"TAILOR_DATA_DIR": str(tmp_path), "TAILOR_ADMIN_KEY_FILE": str(tmp_path / "nope")},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tailor: error: TAILOR_ADMIN_KEY_FILE: cannot read")

"""Runs the real ``tailor`` command in a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
TAILOR = str(Path(sys.executable).parent / "tailor")


def prepared_model_store() -> Path:
    """The model store that `make test` prepared (``tailor models prepare``)."""
    store = Path(os.environ.get("TAILOR_TEST_MODEL_STORE", REPO_ROOT / "var" / "models"))
    if not any(store.glob("*/tailor-model.json")):
        raise RuntimeError(f"no prepared model store at {store}: run `make models` first")
    return store


def served_env(data_dir: Path, admin_key: str, **settings: str) -> dict[str, str]:
    """The settings of a test server over the prepared models, plus ``settings``."""
    return {
        "TAILOR_DATA_DIR": str(data_dir),
        "TAILOR_MODEL_STORE": str(prepared_model_store()),
        "TAILOR_ADMIN_KEY": admin_key,
        "TAILOR_ADAPTER_SLOTS": "4",
        **settings,
    }


# A server's one fine-tune worker, quick to notice cancels and cheap to evaluate.
CPU_WORKER_SETTINGS = {
    "TAILOR_FINETUNE_WORKERS": "1",
    "TAILOR_FINETUNE_DEVICE": "cpu",
    "TAILOR_FINETUNE_HEARTBEAT_SECONDS": "0.5",
    "TAILOR_FINETUNE_TRIGGER_NEW_EXAMPLES": "0",
    "TAILOR_FINETUNE_GENERIC_TEXTS": "6",
    # The fixtures' pirate answers are one template whatever the question: a style that
    # forgets facts by design, which the probes rightly hold back. These tests are about
    # the loop; the probe rule has its own (tests/test_finetune_evaluation.py).
    "TAILOR_FINETUNE_FACTUAL_PROBES": "0",
}


def _xdist_share() -> tuple[int, int]:
    """(this worker's index, the number of workers) under pytest-xdist, else (0, 1)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        return int(worker[2:]), count
    return 0, 1


# Ports this process handed out: a server stopped to be restarted on the same port
# (PrivateRedis, PrivatePostgres) must not see it given to another server meanwhile.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now on 127.0.0.1 that this process never handed out before.

    The port is only reserved once its server binds it, so under pytest-xdist each
    worker takes ports from its own slice of the range: two workers never start
    servers on the same port in the moment between this and the bind.
    """
    index, count = _xdist_share()
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        # Halved first: Linux gives bind() odd ports only, so the parity alone splits nothing.
        if (port >> 1) % count == index and port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found for this test worker")


def tailor_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env.update(extra)
    return env


def run_tailor(
    args: list[str], env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TAILOR, *args], env=tailor_env(env), capture_output=True, text=True, timeout=timeout
    )


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    startup_seconds: float


@contextmanager
def running_server(
    env: Mapping[str, str],
    *,
    timeout: float = 60,
    args: tuple[str, ...] = ("serve",),
    log_path: Path | None = None,
) -> Iterator[RunningServer]:
    """``tailor serve`` (or ``args``) on a free port, until the block ends.

    Its output goes to ``log_path``, or to a temporary file shown if it fails to start.
    """
    port = free_port()
    # No fine-tune worker process unless a test asks for one: most tests
    # need none, and each costs a Python with torch beside the server.
    full_env = {
        "TAILOR_FINETUNE_WORKERS": "0",
        **env,
        "TAILOR_HOST": "127.0.0.1",
        "TAILOR_PORT": str(port),
    }
    started = time.perf_counter()
    # A file, not a pipe: a pipe nobody reads fills up after 64 KiB of log,
    # and the server then blocks on its next write.
    with log_path.open("w+") if log_path is not None else tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [TAILOR, *args],
            env=tailor_env(full_env),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    raise RuntimeError(
                        f"tailor serve exited with {process.returncode}:\n{output.read()}"
                    )
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - started > timeout:
                    raise RuntimeError("tailor serve did not become ready in time")
                time.sleep(0.1)
            yield RunningServer(url, process, time.perf_counter() - started)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

"""How long a new user waits: a fresh clone's `make run` to ready, `make check`, `make test`.

    python3.11 -m benchmarks.setup_times [--cold-pip-cache] [--test]

Clones the committed HEAD of this repository into a temporary directory (so
nothing of this checkout, no .venv, no model store, no caches, is reused) and
runs the README's commands there, printing each phase's time:

1. `make run` on the fresh clone until it prints "tailor: ready:" (venv from
   the lock, model store, server start); with ``--cold-pip-cache`` pip starts
   from an empty cache, so every package is downloaded again (torch's CPU build
   still comes from this machine's disk);
2. `make run` again on the same clone (everything in place: the daily start);
3. `make check` twice (mypy's cache cold, then warm);
4. with ``--test``, `make test` (the whole suite, as CI runs it).

Stdlib only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_run_until_ready(clone: Path, env: dict[str, str]) -> float:
    """Seconds from `make run` to its ready line; each line is printed with its time."""
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "run"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make, tailor serve and its worker: one group to stop
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            elapsed = time.monotonic() - started
            print(f"  {elapsed:7.1f} s  {line.rstrip()}", flush=True)
            if line.startswith("tailor: ready:"):
                return elapsed
        raise SystemExit(f"make run ended with {process.wait()} before it was ready")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def timed(command: list[str], clone: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        raise SystemExit(f"{' '.join(command)} failed with {result.returncode}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cold-pip-cache", action="store_true", help="pip starts empty")
    parser.add_argument("--test", action="store_true", help="also time `make test`")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tailor-setup-") as scratch:
        clone = Path(scratch) / "tailor"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
        ).stdout.strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
        env["TAILOR_PORT"] = str(free_port())
        if args.cold_pip_cache:
            env["PIP_CACHE_DIR"] = str(Path(scratch) / "pip-cache")
        cache = "cold" if args.cold_pip_cache else "warm"
        print(f"fresh clone of {head} in {clone}, pip cache {cache}")
        first = make_run_until_ready(clone, env)
        again = make_run_until_ready(clone, env)
        check_cold = timed(["make", "check"], clone, env)
        check_warm = timed(["make", "check"], clone, env)
        print(f"make run, fresh clone, pip cache {cache}: {first:.0f} s to ready")
        print(f"make run, second time: {again:.1f} s to ready")
        print(f"make check: {check_cold:.0f} s (mypy cache cold), {check_warm:.0f} s (warm)")
        if args.test:
            print(f"make test: {timed(['make', 'test'], clone, env):.0f} s")


if __name__ == "__main__":
    main()

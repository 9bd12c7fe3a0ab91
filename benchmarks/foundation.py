"""Foundation figures: model store preparation, its size, and cold start.

    python -m benchmarks.foundation [--store DIR] [--starts 5] [--skip-prepare]

Prepares the packaged models into a fresh temporary store (the full
conversion a new machine does once), runs prepare again (the no-op every
`make run` does), then starts `tailor serve` several times against the
prepared store and times process start to the first 200 from /readyz.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.server import free_port, tailor_env

TAILOR = str(Path(sys.executable).parent / "tailor")


def timed_prepare(store: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [TAILOR, "models", "prepare"],
        env=tailor_env({"TAILOR_DATA_DIR": str(store.parent), "TAILOR_MODEL_STORE": str(store)}),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cold_start_seconds(store: Path, data_dir: Path) -> float:
    port = free_port()
    env = tailor_env(
        {
            "TAILOR_DATA_DIR": str(data_dir),
            "TAILOR_MODEL_STORE": str(store),
            "TAILOR_PORT": str(port),
        }
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [TAILOR, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError("tailor serve exited before it was ready")
            time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, help="prepared store to reuse (skips conversion)")
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        if args.store is None:
            store = scratch_dir / "models"
            first = timed_prepare(store)
            again = timed_prepare(store)
            print(f"tailor models prepare, fresh store:   {first:8.1f} s")
            print(f"tailor models prepare, already done:  {again:8.2f} s")
        else:
            store = args.store
        size = directory_bytes(store)
        print(f"model store on disk:                  {size / 1e6:8.0f} MB")
        for model_dir in sorted(
            p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            print(f"  {model_dir.name:34s} {directory_bytes(model_dir) / 1e6:8.0f} MB")
        # The first start creates and migrates the SQLite file; later starts reuse it.
        starts = [cold_start_seconds(store, scratch_dir / f"data{i}") for i in range(args.starts)]
        warm_db = [cold_start_seconds(store, scratch_dir / "data0") for _ in range(args.starts)]
        print(
            f"cold start to ready, new database:    {statistics.median(starts):8.2f} s "
            f"(median of {len(starts)}; min {min(starts):.2f}, max {max(starts):.2f})"
        )
        print(
            f"cold start to ready, existing db:     {statistics.median(warm_db):8.2f} s "
            f"(median of {len(warm_db)}; min {min(warm_db):.2f}, max {max(warm_db):.2f})"
        )


if __name__ == "__main__":
    main()

